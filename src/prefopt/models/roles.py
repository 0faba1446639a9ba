"""The four PPO roles — policy, reference, value, reward — over one base or four models.

Shared mode (LoRA): ONE frozen copy of the SFT weights carries three peft adapters:
    "default" = policy (trainable, starts as a zero update: policy == SFT at step 0)
    "value"   = value (trainable, initialised from the reward adapter) + its own head
    "reward"  = reward (frozen) + its head and normalising bias
and the reference is the same weights with every adapter disabled (== the SFT policy).
Separate mode (full fine-tuning): four models, as in the classic setup.

Both expose the same small surface: `hidden(role, ...)`, `lm_head_weight`, `value_head`,
`reward_score(...)`, `generation_model()`, `trainable_parameters()`.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from torch import nn

from prefopt.batching import position_ids
from prefopt.models.heads import last_real_index

ROLES = ("policy", "ref", "value", "reward")


def causal_lm_of(model):
    """The *ForCausalLM inside a peft wrapper (or the model itself)."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model


class SharedRoles:
    """One base, three adapters. Switching role = switching the active adapter (cheap)."""

    def __init__(self, peft_model, value_head: nn.Linear, reward_head: nn.Linear, reward_bias: float):
        self.model = peft_model
        self.lm = causal_lm_of(peft_model)
        self.value_head, self.reward_head, self.reward_bias = value_head, reward_head, reward_bias
        for p in self.reward_head.parameters():
            p.requires_grad_(False)
        # peft's set_adapter() flips requires_grad; we pin the trainable set once and restore it after each switch
        self._trainable = [p for n, p in peft_model.named_parameters() if ".default." in n or ".value." in n]
        self._frozen = [
            p for n, p in peft_model.named_parameters() if not (".default." in n or ".value." in n)
        ]
        self._active = None
        self._use("default")

    def _use(self, adapter: str) -> None:
        if self._active == adapter:
            return
        self.model.base_model.set_adapter(adapter)
        for p in self._trainable:
            p.requires_grad_(True)
        for p in self._frozen:
            p.requires_grad_(False)
        self._active = adapter

    def hidden(self, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B,T] -> final hidden states [B,T,H] of `role` (positions count real tokens only)."""
        pos = position_ids(attention_mask)
        if role == "ref":
            with self.model.disable_adapter():
                return self.lm.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=pos
                ).last_hidden_state
        self._use({"policy": "default", "value": "value", "reward": "reward"}[role])
        return self.lm.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=pos
        ).last_hidden_state

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.lm.lm_head.weight

    @contextlib.contextmanager
    def generation_model(self):
        self._use("default")
        yield self.lm

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self._trainable + list(self.value_head.parameters())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        state = {names[id(p)]: p.detach().clone() for p in self._trainable}
        state |= {f"value_head.{k}": v.detach().clone() for k, v in self.value_head.state_dict().items()}
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.value_head.load_state_dict(
            {k[len("value_head.") :]: v for k, v in state.items() if k.startswith("value_head.")}
        )
        own = {k: v for k, v in state.items() if not k.startswith("value_head.")}
        missing = self.model.load_state_dict(own, strict=False)
        if missing.unexpected_keys:
            raise RuntimeError(f"checkpoint has tensors this model lacks: {missing.unexpected_keys[:3]}")

    def save_policy(self, out_dir: Path, sft_model_dir: Path, tokenizer) -> None:
        """The policy adapter alone, a peft folder over the SFT policy (a prefopt folder)."""
        import json

        from prefopt.models.adapters import META

        self.model.save_pretrained(out_dir, selected_adapters=["default"])
        tokenizer.save_pretrained(out_dir)
        meta = {"method": "lora", "base": str(sft_model_dir), "stage": "ppo"}
        (out_dir / META).write_text(json.dumps(meta, indent=2))

    def base_tensors(self) -> list[torch.Tensor]:
        return [p for n, p in self.model.named_parameters() if "lora_" not in n]


class SeparateRoles:
    """Four full models: policy and value trained, reference and reward frozen."""

    def __init__(
        self,
        policy,
        ref,
        value_trunk,
        value_head: nn.Linear,
        reward_trunk,
        reward_head: nn.Linear,
        reward_bias: float,
    ):
        self.lms = {"policy": policy, "ref": ref, "value": value_trunk, "reward": reward_trunk}
        self.value_head, self.reward_head, self.reward_bias = value_head, reward_head, reward_bias
        for m in (ref, reward_trunk, reward_head):
            for p in m.parameters():
                p.requires_grad_(False)
        for m in (policy, value_trunk, value_head):
            for p in m.parameters():
                p.requires_grad_(True)

    def hidden(self, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        trunk = self.lms[role]
        trunk = trunk.model if hasattr(trunk, "lm_head") else trunk
        pos = position_ids(attention_mask)
        return trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.lms["policy"].lm_head.weight

    @contextlib.contextmanager
    def generation_model(self):
        yield self.lms["policy"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            *self.lms["policy"].parameters(),
            *self.lms["value"].parameters(),
            *self.value_head.parameters(),
        ]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"policy.{k}": v.detach().clone() for k, v in self.lms["policy"].state_dict().items()}
        state |= {f"value.{k}": v.detach().clone() for k, v in self.lms["value"].state_dict().items()}
        state |= {f"value_head.{k}": v.detach().clone() for k, v in self.value_head.state_dict().items()}
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in (
            ("policy.", self.lms["policy"]),
            ("value.", self.lms["value"]),
            ("value_head.", self.value_head),
        ):
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=False
            )

    def save_policy(self, out_dir: Path, sft_model_dir: Path, tokenizer) -> None:
        import json

        from prefopt.models.adapters import META

        self.lms["policy"].save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / META).write_text(
            json.dumps({"method": "none", "base": str(out_dir), "stage": "ppo"}, indent=2)
        )

    def base_tensors(self) -> list[torch.Tensor]:
        return [p for m in self.lms.values() for p in m.parameters()]


def reward_score(roles, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B,T] -> [B]: the normalised reward read at each row's last real token (the EOS)."""
    h = roles.hidden("reward", input_ids, attention_mask)
    h_last = h[torch.arange(h.shape[0], device=h.device), last_real_index(attention_mask)]
    return (
        roles.reward_head(h_last.to(roles.reward_head.weight.dtype)).squeeze(-1).float() - roles.reward_bias
    )


def build_roles(
    sft_model_dir: Path,
    reward_model_dir: Path,
    tokenizer,
    *,
    share_base: bool,
    lora_cfg,
    device: str,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
):
    """Load the SFT policy and the reward model into the four roles (shared when both use LoRA)."""
    from prefopt.models.adapters import load_merged_policy, read_meta, targets_for
    from prefopt.models.load import set_attention
    from prefopt.reward.model import load_reward_adapter_into, load_reward_model

    sft = load_merged_policy(sft_model_dir, tokenizer, device=device)
    set_attention(sft, attn_implementation)  # the copies below (reference, shared roles) inherit it
    reward_meta = read_meta(reward_model_dir)
    if share_base and reward_meta.get("method") == "lora":
        from peft import LoraConfig, get_peft_model

        policy_cfg = LoraConfig(
            r=lora_cfg.r,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=0.0,
            target_modules=targets_for(lora_cfg),
        )
        model = get_peft_model(sft, policy_cfg, adapter_name="default")
        reward_head, bias = load_reward_adapter_into(model, reward_model_dir, adapter_name="reward")
        value_head, _ = load_reward_adapter_into(
            model, reward_model_dir, adapter_name="value", trainable=True
        )
        _checkpointing(sft, gradient_checkpointing)
        return SharedRoles(model, value_head.to(device), reward_head.to(device), bias)
    reward = load_reward_model(reward_model_dir, tokenizer, device=device)
    set_attention(reward, attn_implementation)
    value = copy.deepcopy(reward)
    ref = copy.deepcopy(sft)
    for trained in (sft, value.trunk):
        _checkpointing(trained, gradient_checkpointing)
    return SeparateRoles(sft, ref, value.trunk, value.head, reward.trunk, reward.head, float(reward.bias))


def _checkpointing(model, on: bool) -> None:
    """Recompute activations in the backward pass. transformers only checkpoints modules in training
    mode; dropout is already 0 everywhere, so train() changes nothing else."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
