"""Processes and seeds. Distribution is accelerate's job; this only wraps the bits every stage needs."""

from __future__ import annotations

import random

import numpy as np
import torch


def make_accelerator(mixed_precision: str | None = None):
    """An `accelerate.Accelerator`: bf16 autocast on GPU, none on CPU. Works under `accelerate launch`."""
    from accelerate import Accelerator

    if mixed_precision is None:
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError:
        # accelerate's state is a process-wide singleton: in ONE process (tests, notebooks) a later stage
        # may ask for another precision; start afresh. Launched processes keep the error.
        from accelerate.state import AcceleratorState

        if AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed_precision)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch. Callers pass `cfg.seed + rank` for per-rank sampling streams
    and `cfg.seed` alone wherever every rank must agree (data shuffles)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
