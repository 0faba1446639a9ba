"""Reward and value models: a causal-LM trunk (no LM head) + a scalar linear head.

The reward is read at the LAST REAL token of each row, wherever the padding is. Position ids are
derived from the attention mask, so a left-padded row gets the same positions (and the same values)
as the unpadded row. RoPE is relative, so for Qwen/Llama a constant shift almost cancels; for an
absolute-position trunk (GPT-2) default positions would change every left-padded score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel

from prefopt.batching import position_ids
from prefopt.models.load import disable_dropout

HEAD_FILE = "scalar_head.safetensors"
META_FILE = "scalar_head.json"
TRUNK_DIR = "trunk"


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 mask -> [B] index of the last real token of each row (left or right padding)."""
    if not bool(attention_mask.any(-1).all()):
        raise ValueError("a row of attention_mask has no real token")
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def _trunk_of(model: nn.Module) -> nn.Module:
    """The base of a *ForCausalLM (`model.model`); any other module (AutoModel, PeftModel) as is."""
    if isinstance(model, PreTrainedModel) and model.base_model is not model:
        return model.base_model
    return model


class ScalarHeadModel(nn.Module):
    """trunk -> last hidden state [B, T, H] -> Linear(H, 1) -> values [B, T].

    `trunk` may be a *ForCausalLM (its LM head is dropped), an AutoModel, or a peft model around an
    AutoModel; it must return `last_hidden_state`. The head is kept in fp32 whatever the trunk's dtype,
    so scores keep their precision under bf16. `bias` is subtracted from `score` (set after reward
    training so reference summaries score 0 on average).
    """

    def __init__(self, trunk: nn.Module, hidden_size: int | None = None):
        super().__init__()
        self.trunk = _trunk_of(trunk)
        hidden = hidden_size or self.trunk.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        # std 1/sqrt(H+1) keeps initial scores O(1) (as in OpenAI's lm-human-preferences).
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("bias", torch.zeros(()))
        device = next(self.trunk.parameters(), torch.empty(0)).device
        self.head.to(device)
        self.bias = self.bias.to(device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_ids: torch.Tensor | None = None,
        completion_mask: torch.Tensor | None = None,
        completion_prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask [B, T] -> per-token values [B, T] (fp32, bias NOT subtracted).

        With `completion_ids` [N, S] (right-padded; row j continues prompt `completion_prompt[j]`, as
        `batching.collate_grouped` builds them), the left-padded prompts `input_ids` are run ONCE and every completion continues from its prompt's KV cache: returns values over the
        completion positions [N, S]. Gradients flow through the shared cache, so this equals scoring
        each prompt + completion in full, at a fraction of the cost when prompts are long (TL;DR: ~200
        prompt tokens, ~25 summary tokens) and when one prompt has several completions."""
        out = self.trunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=completion_ids is not None,
        )
        if completion_ids is None:
            return self.head(out.last_hidden_state.to(self.head.weight.dtype)).squeeze(-1)
        from prefopt.generate import cache_kwarg, cache_of

        if completion_mask is None or completion_prompt is None:
            raise ValueError("completion_ids need completion_mask and completion_prompt (collate_grouped)")
        cache = cache_of(out)
        # a differentiable gather: each prompt's keys/values serve all of its completions
        cache.batch_select_indices(completion_prompt)
        mask = torch.cat([attention_mask[completion_prompt], completion_mask], dim=1)
        out = self.trunk(
            input_ids=completion_ids,
            attention_mask=mask,
            position_ids=position_ids(mask)[:, input_ids.shape[1] :],
            use_cache=True,
            **{cache_kwarg(self.trunk): cache},
        )
        return self.head(out.last_hidden_state.to(self.head.weight.dtype)).squeeze(-1)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, T] -> [B]: value at each row's last real token, minus `bias`."""
        values = self(input_ids, attention_mask)  # [B, T]
        idx = last_real_index(attention_mask)  # [B]
        return values.gather(1, idx[:, None]).squeeze(1) - self.bias

    def set_bias(self, value: float) -> None:
        self.bias.fill_(float(value))

    def save(self, out_dir: str | Path, save_trunk: bool = True) -> None:
        """Head + bias as safetensors and json in `out_dir`; trunk (or its peft adapter) in `out_dir/trunk`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weight": self.head.weight,
            "head_bias": self.head.bias,
            "score_bias": self.bias.reshape(1),
        }
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, out_dir / HEAD_FILE)
        meta = {"hidden_size": self.head.in_features, "bias": float(self.bias), "trunk_saved": save_trunk}
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        if save_trunk:
            self.trunk.save_pretrained(out_dir / TRUNK_DIR)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        trunk: nn.Module | None = None,
        *,
        dtype: torch.dtype | None = None,
        dropout_off: bool = True,
    ) -> ScalarHeadModel:
        """Rebuild from `save`. Pass `trunk` when it was not saved (or to share one already in memory).

        A saved peft adapter is re-attached to the base named in its adapter_config.json. A trunk
        loaded here has dropout turned off (RM and PPO run without dropout).
        """
        model_dir = Path(model_dir)
        meta = json.loads((model_dir / META_FILE).read_text())
        if trunk is None:
            trunk = _load_trunk(model_dir / TRUNK_DIR, dtype, meta)
            if dropout_off:
                disable_dropout(trunk)
        model = cls(trunk, hidden_size=meta["hidden_size"])
        state = load_file(model_dir / HEAD_FILE)
        with torch.no_grad():
            model.head.weight.copy_(state["weight"])
            model.head.bias.copy_(state["head_bias"])
            model.bias.copy_(state["score_bias"][0])
        return model


def _load_trunk(trunk_dir: Path, dtype: torch.dtype | None, meta: dict) -> nn.Module:
    if not meta.get("trunk_saved", True) or not trunk_dir.is_dir():
        raise FileNotFoundError(f"no trunk saved in {trunk_dir}; pass trunk=... to ScalarHeadModel.load")
    adapter_cfg = trunk_dir / "adapter_config.json"
    if not adapter_cfg.is_file():
        return AutoModel.from_pretrained(trunk_dir, dtype=dtype)
    from peft import PeftModel  # only needed for adapter trunks

    base_path = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{adapter_cfg} names no base model; pass trunk=... to ScalarHeadModel.load")
    return PeftModel.from_pretrained(AutoModel.from_pretrained(base_path, dtype=dtype), trunk_dir)
