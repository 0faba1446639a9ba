"""Bottleneck adapter (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

A small bottleneck MLP with a skip connection is applied to the output h of a frozen sub-layer
(the paper puts one after the attention output projection and one after the feed-forward block):

    adapter(h) = h + W_up f(W_down h + b_down) + b_up      W_down: (b x d), W_up: (d x b), b << d

It costs 2*d*b + b + d parameters per place. The paper initialises the adapter "near identity";
we make it exactly the identity by starting W_up and b_up at zero, so the adapted model computes
exactly what the base model computes until training moves W_up.
"""

from __future__ import annotations

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    """Wraps a module (kept as `base_layer`) and adapts its output with a residual bottleneck.

    Args:
        base_layer: the module whose output is adapted; if it returns a tuple (attention blocks do),
            the first element is adapted and the rest passed through.
        dim: width d of the wrapped module's output.
        bottleneck: width b of the bottleneck.
        activation: the nonlinearity f between the projections.
    """

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int = 64, activation: str = "gelu"):
        super().__init__()
        if bottleneck <= 0:
            raise ValueError(f"adapter bottleneck must be positive, got {bottleneck}")
        self.base_layer = base_layer
        self.dim = dim
        self.bottleneck = bottleneck
        like = next(base_layer.parameters(), None)
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        self.adapter_down = nn.Linear(dim, bottleneck, **factory)
        self.adapter_act = {"gelu": nn.GELU(), "relu": nn.ReLU(), "silu": nn.SiLU()}[activation]
        self.adapter_up = nn.Linear(bottleneck, dim, **factory)
        nn.init.zeros_(self.adapter_up.weight)  # zero up-projection: adapter(h) == h at init
        nn.init.zeros_(self.adapter_up.bias)
        self.enabled = True

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        """h: (..., d) -> (..., d): the residual bottleneck."""
        update = self.adapter_up(self.adapter_act(self.adapter_down(h.to(self.adapter_down.weight.dtype))))
        return h + update.to(h.dtype)  # the casts allow float32 adapter weights beside a bf16 base

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if not self.enabled:
            return out
        if isinstance(out, tuple):
            return (self.adapt(out[0]), *out[1:])
        return self.adapt(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bottleneck={self.bottleneck}"
