"""Put a PEFT method on a model, save it in its natural form, load it back merged.

Saved forms (always with the tokenizer and a `prefopt.json` that says which form it is):
  none          full weights, `save_pretrained`
  lora          a peft adapter folder (`adapter_config.json`, `adapter_model.safetensors`) over `base`
  lora-scratch, adapter, prefix
                `adapter.safetensors` (prefopt's own modules) over `base`
Later stages start from the SFT policy *merged* into its base, so one set of weights serves every role.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefopt.config import PeftConfig

META = "prefopt.json"


def apply_peft(model, cfg: PeftConfig, *, adapter_name: str = "default"):
    """Return `model` with `cfg.method` injected and everything else frozen (`none`: all trainable)."""
    if cfg.method == "none":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets_for(cfg)
        )
        return get_peft_model(model, lora, adapter_name=adapter_name)
    from prefopt.peft_scratch import inject

    return inject(model, _scratch_method(cfg.method), targets_for(cfg), **scratch_hyper(cfg))


def targets_for(cfg: PeftConfig) -> list[str]:
    """The configured target modules, or the method's default (LoRA: attention projections;
    adapter: attention output and MLP down-projection; prefix: every attention block)."""
    if cfg.target_modules is not None:
        return list(cfg.target_modules)
    from prefopt.peft_scratch import DEFAULT_TARGETS

    if cfg.method in ("lora", "lora-scratch"):
        return ["q_proj", "k_proj", "v_proj", "o_proj"]
    return list(DEFAULT_TARGETS[_scratch_method(cfg.method)])


def strip_adapters(model):
    """Replace every (merged) scratch LoRA layer by its base Linear: a plain model again."""
    from prefopt.peft_scratch import LoRALinear

    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.base_layer)
    return model


def _scratch_method(method: str) -> str:
    return {"lora-scratch": "lora", "adapter": "adapter", "prefix": "prefix"}[method]


def scratch_hyper(cfg: PeftConfig) -> dict:
    """The keyword arguments of `peft_scratch.inject` for a method."""
    if cfg.method == "lora-scratch":
        return {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout}
    if cfg.method == "adapter":
        return {"bottleneck": cfg.adapter_size}
    if cfg.method == "prefix":
        return {"num_virtual_tokens": cfg.prefix_tokens}
    raise ValueError(cfg.method)


def save_policy(model, out_dir: Path, cfg: PeftConfig, base: str, tokenizer) -> None:
    """Save in the method's natural form (see module doc); `base` is where the base weights live."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    if cfg.method in ("none", "lora"):
        model.save_pretrained(out_dir)
    else:
        from safetensors.torch import save_file

        from prefopt.peft_scratch import adapter_state_dict

        save_file(
            {k: v.contiguous() for k, v in adapter_state_dict(model).items()}, out_dir / "adapter.safetensors"
        )
    meta = {"method": cfg.method, "base": str(base), "peft": cfg.model_dump()}
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    if cfg.merge_on_save and cfg.method in ("lora", "lora-scratch"):
        merged = merged_copy(model, cfg.method)
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")


def merged_copy(model, method: str):
    """Weights with the adapter folded in (a copy for scratch LoRA, peft's merge_and_unload for peft)."""
    import copy

    if method == "lora":
        return copy.deepcopy(model).merge_and_unload()
    from prefopt.peft_scratch import merge_all

    clone = copy.deepcopy(model)
    merge_all(clone)
    return strip_adapters(clone)


def load_merged_policy(model_dir: Path, tokenizer, *, dtype: str = "auto", device: str | None = None):
    """The saved policy as a plain causal LM with any LoRA merged in (the trunk of later stages)."""
    from prefopt.models.load import load_causal_lm

    meta = read_meta(model_dir)
    method = meta["method"]
    if method == "none":
        return load_causal_lm(str(model_dir), tokenizer, dtype=dtype, device=device)
    if (Path(meta["base"]) / META).is_file():  # an adapter over another prefopt policy (PPO over SFT)
        model = load_merged_policy(Path(meta["base"]), tokenizer, dtype=dtype, device=device)
    else:
        model = load_causal_lm(meta["base"], tokenizer, dtype=dtype, device=device)
    if method == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    if method == "prefix":
        raise ValueError(
            f"{model_dir}: a prefix-tuned policy cannot be merged into its base; "
            "train SFT with peft.method=lora, lora-scratch or none for the reward and PPO stages"
        )
    return load_scratch(model, model_dir, PeftConfig(**meta["peft"]), merge=True)


def load_scratch(model, model_dir: Path, cfg: PeftConfig, *, merge: bool):
    """Re-inject prefopt's own modules, load their weights, optionally merge them away."""
    from safetensors.torch import load_file

    from prefopt.peft_scratch import inject, load_adapter_state_dict, merge_all

    model = inject(model, _scratch_method(cfg.method), targets_for(cfg), **scratch_hyper(cfg))
    load_adapter_state_dict(model, load_file(str(model_dir / "adapter.safetensors")))
    if merge:
        if cfg.method == "adapter":
            raise ValueError(
                f"{model_dir}: bottleneck adapters cannot be merged; use lora or none for later stages"
            )
        merge_all(model)
        model = strip_adapters(model)
    return model


def read_meta(model_dir: Path) -> dict:
    path = Path(model_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: not a prefopt model folder (no {META}); did the stage finish?")
    return json.loads(path.read_text())
