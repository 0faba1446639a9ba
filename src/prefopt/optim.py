"""AdamW and the learning-rate schedules every stage uses."""

from __future__ import annotations

import math

import torch


def make_optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (frozen base weights get no optimizer state)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameter: check peft.method and peft.target_modules")
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak LR at optimizer step `s`: linear warmup, then cosine/linear decay or constant."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def make_scheduler(optimizer, schedule: str, warmup_ratio: float, total_steps: int):
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup, total_steps))
