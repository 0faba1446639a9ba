"""Training plumbing shared by the SFT and reward stages: the data order and checkpoints of trainable state.

Two guarantees every stage loop relies on:
- step s always sees the same examples, on every rank, however often the run was interrupted;
- a checkpoint holds only the trainable tensors (adapter, head, or all weights under full fine-tuning)
  plus optimizer, scheduler and RNG, so resuming continues the uninterrupted run exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prefopt.batching import grouped_order, length_grouped_order
from prefopt.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.stage import Stage

T = TypeVar("T")

TRAINABLE_FILE = "trainable.safetensors"


def local_microbatches(
    items: Sequence[T],
    lengths: tuple[int, ...],
    step: int,
    *,
    batch_size: int,
    micro: int,
    accum: int,
    seed: int,
    acc,
    groups: tuple[int, ...] | None = None,
) -> list[list[T]]:
    """This rank's `accum` micro-batches of global step `step`.

    Example g of the stream is order(epoch = g // n)[g % n]; each epoch's length-grouped order is seeded
    by `seed + epoch`, identical on every rank, and the step's `batch_size` examples are dealt out as
    `accum` micro-batches per rank (rank r gets micro-batches r*accum .. (r+1)*accum - 1). With
    `groups` (a group id per item), the items of a group stay together in the order."""
    n = len(items)
    orders: dict[int, list[int]] = {}  # one cache lookup per epoch the step touches (hashing is O(n))
    idx = []
    for g in range(step * batch_size, (step + 1) * batch_size):
        if g // n not in orders:
            orders[g // n] = epoch_order(lengths, seed + g // n, micro, groups)
        idx.append(orders[g // n][g % n])
    mbs = [[items[i] for i in idx[k * micro : (k + 1) * micro]] for k in range(accum * acc.num_processes)]
    return mbs[acc.process_index * accum : (acc.process_index + 1) * accum]


@functools.lru_cache(maxsize=4)
def epoch_order(
    lengths: tuple[int, ...], seed: int, micro: int, groups: tuple[int, ...] | None = None
) -> list[int]:
    if groups is not None:
        return grouped_order(lengths, groups, micro, seed)
    return length_grouped_order(lengths, micro, seed)


def trainable_state(model) -> dict[str, Any]:
    """Copies of the parameters that require grad, by name."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_latest(st: Stage, opt, sched, load_state: Callable[[dict[str, Any]], None]) -> dict | None:
    """Restore the stage's latest checkpoint: `load_state` gets the saved trainable tensors; optimizer,
    scheduler and RNG are restored too. Returns the checkpoint's `extra` (it holds "step"), or None."""
    ckpt = latest_checkpoint(st.ckpt_dir)
    if ckpt is None:
        return None

    def load_model(folder: Path) -> None:
        from safetensors.torch import load_file

        load_state(load_file(str(folder / TRAINABLE_FILE)))

    extra = load_checkpoint(ckpt, load_model_fn=load_model, optimizer=opt, scheduler=sched)
    st.print(f"resumed from {ckpt.name} (step {extra['step']})")
    return extra


def save_state(
    st: Stage,
    step: int,
    state: Callable[[], dict[str, Any]],
    opt,
    sched,
    keep_last: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Checkpoint `state()` (the trainable tensors) + optimizer + scheduler + `extra` at `step`, main process only."""
    if not st.is_main:
        return

    def save_model(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state().items()}, str(folder / TRAINABLE_FILE))

    save_checkpoint(
        st.ckpt_dir,
        step,
        save_model_fn=save_model,
        optimizer=opt,
        scheduler=sched,
        extra={"step": step, **(extra or {})},
        keep_last=keep_last,
    )


def resume(st: Stage, model, opt, sched) -> int:
    """Load the latest checkpoint of the stage (trainable tensors, optimizer, scheduler, RNG); return its
    step, or 0 when there is none. A checkpoint that lacks a trainable tensor (the config changed) raises."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def load_into_model(state: dict[str, Any]) -> None:
        missing = trainable - set(state)
        if missing:
            raise RuntimeError(
                f"{st.ckpt_dir}: checkpoint lacks {len(missing)} trainable tensors (config changed?)"
            )
        model.load_state_dict(state, strict=False)

    extra = load_latest(st, opt, sched, load_into_model)
    return 0 if extra is None else int(extra["step"])


def save_ckpt(st: Stage, model, opt, sched, step: int, keep_last: int) -> None:
    """Checkpoint the trainable tensors + optimizer + scheduler at `step` (main process only)."""
    save_state(st, step, lambda: trainable_state(model), opt, sched, keep_last)
