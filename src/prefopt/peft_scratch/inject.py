"""Put an adapter into any transformers model, and the few operations done on adapted models.

Modules are chosen like peft's `target_modules`: a module is targeted when its qualified name
equals a target or ends with "." + target (so "q_proj" hits "model.layers.3.self_attn.q_proj").
Every parameter that is not an adapter parameter is frozen.

An adapter parameter is a parameter of an adapter module (LoRALinear, BottleneckAdapter,
PrefixEncoder) that is not under its `base_layer`: that one rule drives freezing, counting,
saving and loading, so adapters can be stacked (e.g. LoRA and a prefix) on one model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prefopt.peft_scratch.adapter import BottleneckAdapter
from prefopt.peft_scratch.lora import LoRALinear
from prefopt.peft_scratch.prefix import PrefixEncoder, attach_prefix

ADAPTER_TYPES = (LoRALinear, BottleneckAdapter, PrefixEncoder)
METHODS = ("lora", "adapter", "prefix")
DEFAULT_TARGETS = {"lora": ["q_proj", "v_proj"], "adapter": ["o_proj", "down_proj"], "prefix": ["self_attn"]}
PREFIX_ENCODER_NAME = "prefix_encoder"


def matching_modules(model: nn.Module, target_modules: list[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs whose name equals or ends with '.' + one of the targets, in model order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if name and any(name == t or name.endswith("." + t) for t in target_modules)
    ]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _output_dim(module: nn.Module, model: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return cfg.hidden_size  # blocks such as an MLP or attention return the residual-stream width


def inject(model: nn.Module, method: str, target_modules: list[str] | None = None, **hyper) -> nn.Module:
    """Add `method` ("lora" | "adapter" | "prefix") to the targeted modules, freeze all else; in place.

    hyper: lora: r, alpha, dropout; adapter: bottleneck, activation; prefix: num_virtual_tokens,
    projection, encoder_hidden_size. target_modules defaults to DEFAULT_TARGETS[method].
    Returns the same model.
    """
    if method not in METHODS:
        raise ValueError(f"unknown PEFT method {method!r}; expected one of {METHODS}")
    targets = target_modules or DEFAULT_TARGETS[method]
    matches = matching_modules(model, targets)
    if not matches:
        raise ValueError(f"no module of {type(model).__name__} matches target_modules={targets}")
    if method == "lora":
        for name, module in matches:
            if not isinstance(module, nn.Linear):
                raise TypeError(f"LoRA needs nn.Linear targets; {name} is {type(module).__name__}")
            _replace(model, name, LoRALinear(module, **hyper))
    elif method == "adapter":
        for name, module in matches:
            _replace(model, name, BottleneckAdapter(module, _output_dim(module, model), **hyper))
    else:
        if hasattr(model, PREFIX_ENCODER_NAME):
            raise ValueError("this model already has a prefix")
        encoder = attach_prefix(model, [module for _, module in matches], **hyper)
        model.add_module(PREFIX_ENCODER_NAME, encoder)
    adapter_ids = {id(p) for p in adapter_parameters(model).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapter_ids)
    return model


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter parameter of the model by qualified name (same names as in model.state_dict())."""
    found: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, ADAPTER_TYPES):
            for name, p in module.named_parameters():
                if not name.startswith("base_layer."):
                    found[f"{module_name}.{name}" if module_name else name] = p
    return found


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _adapter_modules(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, ADAPTER_TYPES))


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter on or off; off, the model computes exactly its base model."""
    for module in _adapter_modules(model):
        if not enabled and getattr(module, "merged", False):
            raise RuntimeError("cannot disable a merged LoRA layer: call unmerge_all(model) first")
        module.enabled = enabled


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """`with adapters_disabled(policy):` runs the base model (the PPO reference), then restores."""
    previous = [(m, m.enabled) for m in _adapter_modules(model)]
    set_adapters_enabled(model, False)
    try:
        yield model
    finally:
        for module, enabled in previous:
            module.enabled = enabled


def merge_all(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight (other methods cannot be merged: they stay)."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.merge()


def unmerge_all(model: nn.Module) -> None:
    """Undo merge_all."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.unmerge()


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Just the adapter weights (detached copies), for saving a small checkpoint."""
    return {name: p.detach().clone() for name, p in adapter_parameters(model).items()}


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter weights into a model injected with the same method and targets (strict)."""
    params = adapter_parameters(model)
    missing, unexpected = params.keys() - state_dict.keys(), state_dict.keys() - params.keys()
    if missing or unexpected:
        raise KeyError(
            f"adapter state dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for name, p in params.items():
        if p.shape != state_dict[name].shape:
            raise ValueError(
                f"{name}: saved shape {tuple(state_dict[name].shape)} != model's {tuple(p.shape)}"
            )
        p.copy_(state_dict[name])
