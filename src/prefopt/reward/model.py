"""Build, save and load the reward model: the SFT policy's trunk (merged) + a scalar head + a bias.

Saved form, `<run>/reward/model/`:
  prefopt.json           {"kind": "reward", "method": "lora" | "none", "base": <run>/sft/model, "bias": b, ...}
  adapter_config.json +  method "lora": a peft LoRA adapter over the SFT policy merged into its base
  adapter_model.safetensors
  config.json + model.safetensors   method "none": the full trunk (an AutoModel, no LM head)
  head.safetensors       the scalar head: weight [1, H], bias [1] (fp32)
  tokenizer files
The LoRA adapter is keyed like one on the *ForCausalLM (peft applied to the causal LM, not its inner
trunk), so PPO can load it as a named adapter onto the same SFT-merged model that carries the policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from prefopt.config import PeftConfig
from prefopt.models.adapters import META, apply_peft, load_merged_policy, read_meta
from prefopt.models.heads import ScalarHeadModel

HEAD_FILE = "head.safetensors"
SUPPORTED_METHODS = ("none", "lora", "lora-scratch")


def build_reward_model(sft_model_dir: Path, tokenizer, peft_cfg: PeftConfig, *, dtype: str, device: str):
    """The SFT policy merged, with a fresh scalar head; returns (ScalarHeadModel, peft wrapper or None).

    `lora` and `lora-scratch` both train a *peft* LoRA here: PPO loads the reward model as a named peft
    adapter onto the shared SFT trunk, which needs peft's format. `none` trains every weight.
    Dropout is off (load_causal_lm), also on the LoRA path.
    """
    if peft_cfg.method not in SUPPORTED_METHODS:
        raise ValueError(
            f"peft.method={peft_cfg.method}: the reward stage supports {', '.join(SUPPORTED_METHODS)} "
            "(its trunk is the SFT policy merged, and PPO shares it through LoRA or full copies)"
        )
    causal = load_merged_policy(Path(sft_model_dir), tokenizer, dtype=dtype, device=device)
    wrapper = None
    if peft_cfg.method == "none":
        for p in causal.parameters():
            p.requires_grad_(True)
    else:
        lora_cfg = peft_cfg.model_copy(update={"method": "lora", "dropout": 0.0})
        wrapper = apply_peft(causal, lora_cfg)  # LoRA injected in place into causal.model; base frozen
    model = ScalarHeadModel(causal)  # the head's trunk = causal.model (LoRA layers included)
    # Bradley-Terry sees only r_c - r_r, so the head's own bias has zero gradient in exact arithmetic;
    # in float it gets rounding noise that Adam would scale up to full lr-sized steps. Frozen, it stays 0.
    model.head.bias.requires_grad_(False)
    return model, wrapper


def save_reward_model(
    model: ScalarHeadModel,
    out_dir: Path,
    *,
    peft_wrapper,
    base: Path,
    tokenizer,
    extra: dict | None = None,
) -> None:
    """Write the folder described in the module doc. `peft_wrapper` is the PeftModel from
    `build_reward_model` (None under full fine-tuning); `base` is the SFT policy folder."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    if peft_wrapper is not None:
        peft_wrapper.save_pretrained(str(out_dir), save_embedding_layers=False)
    else:
        model.trunk.save_pretrained(out_dir)
    head = {k: v.detach().float().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(out_dir / HEAD_FILE))
    meta = {
        "kind": "reward",
        "method": "none" if peft_wrapper is None else "lora",
        "base": str(base),
        "bias": float(model.bias),
        "hidden_size": model.head.in_features,
        **(extra or {}),
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2))


def reward_model_dir(path: Path) -> Path:
    """Accept `<run>/reward` or `<run>/reward/model`; check it holds a reward model."""
    path = Path(path)
    if not (path / META).is_file() and (path / "model" / META).is_file():
        path = path / "model"
    meta = read_meta(path)
    if meta.get("kind") != "reward":
        raise ValueError(f"{path}: not a reward model folder (prefopt.json kind={meta.get('kind')!r})")
    return path


def _sft_base(model_dir: Path, meta: dict) -> Path:
    """The SFT policy folder the LoRA was trained over; falls back to the run's own `sft/model` when the
    recorded path does not resolve from here (the run folder was moved or the cwd differs)."""
    recorded = Path(meta["base"])
    if (recorded / META).is_file():
        return recorded
    sibling = model_dir.parent.parent / "sft" / "model"
    if (sibling / META).is_file():
        return sibling
    raise FileNotFoundError(f"{model_dir}: its SFT base {recorded} is missing (needed to rebuild the trunk)")


def _load_head(model_dir: Path, hidden: int) -> nn.Linear:
    from safetensors.torch import load_file

    head = nn.Linear(hidden, 1)
    head.load_state_dict(load_file(str(model_dir / HEAD_FILE)))
    return head


def load_reward_model(
    path: Path, tokenizer, device: str | None = None, *, dtype: str = "auto"
) -> ScalarHeadModel:
    """The saved reward model as one ScalarHeadModel (LoRA merged into the trunk, bias set), in eval mode."""
    from prefopt.models.load import disable_dropout, resolve_dtype

    model_dir = reward_model_dir(path)
    meta = read_meta(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if meta["method"] == "lora":
        from peft import PeftModel

        causal = load_merged_policy(_sft_base(model_dir, meta), tokenizer, dtype=dtype, device=device)
        trunk = PeftModel.from_pretrained(causal, str(model_dir)).merge_and_unload()
    else:
        from transformers import AutoModel

        trunk = AutoModel.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype, device))
        disable_dropout(trunk)
    model = ScalarHeadModel(trunk.to(device))
    model.head.load_state_dict(_load_head(model_dir, meta["hidden_size"]).state_dict())
    model.set_bias(meta["bias"])
    return model.eval()


def load_reward_adapter_into(
    peft_model, reward_dir: Path, adapter_name: str = "reward", *, trainable: bool = False
) -> tuple[nn.Linear, float]:
    """Load the reward LoRA as adapter `adapter_name` onto `peft_model` (a PeftModel whose base is the
    SFT-merged causal LM); return (scalar head, bias). `trainable=True` (the value model, initialised
    from the reward model) leaves adapter and head trainable; otherwise both are frozen."""
    model_dir = reward_model_dir(reward_dir)
    meta = read_meta(model_dir)
    if meta["method"] != "lora":
        raise ValueError(
            f"{model_dir}: a {meta['method']!r} reward model has no adapter to share; load it with load_reward_model"
        )
    peft_model.load_adapter(str(model_dir), adapter_name=adapter_name, is_trainable=trainable)
    head = _load_head(model_dir, meta["hidden_size"])
    head.requires_grad_(trainable)
    device = next(peft_model.parameters()).device
    return head.to(device), float(meta["bias"])
