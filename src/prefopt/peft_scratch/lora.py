"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685).

A frozen weight W (out x in) is adapted by a low-rank update:

    h = W x + (alpha / r) * B A x        A: (r x in), B: (out x r), r << min(in, out)

Only A and B are trained, r * (in + out) parameters instead of in * out. B starts at zero, so at
initialisation the adapted layer computes exactly what the base layer computes (the paper's
"delta W = BA is zero at the beginning of training"). A starts like an `nn.Linear` weight
(kaiming-uniform, a=sqrt(5)), as in Microsoft's loralib and peft's default.

Because the update is linear it can be folded into W for inference (`merge`) and taken out again
(`unmerge`): no extra latency once merged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """Wraps an `nn.Linear` with a rank-r update; the wrapped layer is kept as `base_layer`.

    Args:
        base_layer: the linear layer to adapt (its parameters are left as they are; `inject` freezes them).
        r: rank of the update.
        alpha: scale numerator; the update is multiplied by alpha / r, so changing r keeps its size.
        dropout: dropout on the LoRA path only (the base path is the pretrained model, untouched).
    """

    def __init__(self, base_layer: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.base_layer = base_layer
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # False: behave exactly as the base layer (e.g. the PPO reference model)
        self.merged = False  # True: B A * scaling has been added into base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out)."""
        if self.merged and not self.enabled:
            raise RuntimeError("a merged LoRA layer cannot be disabled: call unmerge() first")
        y = self.base_layer(x)
        if self.enabled and not self.merged:
            # Same order as the paper's B(A(x)): never build the (out x in) matrix in the forward pass.
            # The casts let A, B be kept in float32 beside a bf16 base (a common, stabler setup).
            update = (
                self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T
            ) * self.scaling
            y = y + update.to(y.dtype)
        return y

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the base weight: (out, in) = B @ A * alpha / r."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: W <- W + B A * scaling."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out again: W <- W - B A * scaling (exact up to float rounding)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        a, b = tuple(self.lora_A.shape), tuple(self.lora_B.shape)
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, lora_A={a}, lora_B={b}"
