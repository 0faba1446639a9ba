"""Atomic checkpoints and exact resume, one helper for every stage.

A checkpoint is a folder ``<ckpt_root>/step-00000120/`` holding:

- ``model.safetensors`` (a state dict) and/or ``model/`` (written by a callback, e.g. ``save_pretrained``)
- ``optimizer.pt``, ``scheduler.pt`` (``state_dict()`` via ``torch.save``)
- ``rng.pt``: python ``random``, numpy, torch CPU and (if present) CUDA generator states
- ``extra.pt``: the caller's dict (data position, KL controller, ...), saved with ``torch.save`` so
  tuples, int keys and tensors round-trip exactly (JSON would turn them into lists and strings)
- ``meta.json``: step, time, file list (human-readable)

Everything is written into a hidden temporary folder next to it, fsynced, then renamed into place, so a
crash at any moment leaves either no new checkpoint or a whole one; older checkpoints are pruned only
after the new one is in place. Save from the main process only.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from prefopt.runs import fsync_dir

MODEL_FILE = "model.safetensors"
MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
EXTRA_FILE = "extra.pt"
META_FILE = "meta.json"

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_LEFTOVER_PREFIXES = (".tmp-step-", ".old-step-")  # from a crash during an earlier save


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor] | None = None,
    save_model_fn: Callable[[Path], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
    keep_last: int | None = 2,
) -> Path:
    """Write ``ckpt_root/step-{step:08d}`` atomically and return its path.

    ``save_model_fn(folder)`` is called with an empty ``model/`` folder to fill (adapters, save_pretrained).
    ``extra`` must hold plain data (numbers, strings, lists, tuples, dicts, tensors): it is loaded back
    with ``weights_only=True``, which refuses arbitrary objects.
    ``keep_last``: how many checkpoints to keep (by step, the new one always kept); None keeps all.
    Saving a step that already exists replaces it.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-step-{step:08d}-"))
    try:
        if model_state is not None:
            safetensors.torch.save_file(_unshared(model_state), tmp / MODEL_FILE)
        if save_model_fn is not None:
            (tmp / MODEL_DIR).mkdir()
            save_model_fn(tmp / MODEL_DIR)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        torch.save(_rng_state(), tmp / RNG_FILE)
        torch.save(dict(extra or {}), tmp / EXTRA_FILE)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        meta = {"step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    _prune(root, keep_last, keep=final)
    return final


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None. Temporary and partial folders are ignored."""
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ``ckpt_root``, oldest step first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / META_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint folder was saved at (from its name ``step-XXXXXXXX``)."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (expected a name like step-00000120)")
    return int(match.group(1))


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module | None = None,
    load_model_fn: Callable[[Path], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what the caller passes (model weights, optimizer, scheduler, RNG states); return ``extra``.

    ``model`` loads ``model.safetensors`` strictly; ``load_model_fn(folder)`` is given the ``model/``
    folder. Asking for a part the checkpoint lacks raises, so a resume never silently restarts a part.
    """
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {META_FILE})")
    if model is not None:
        model.load_state_dict(safetensors.torch.load_file(_need(path, MODEL_FILE)), strict=True)
    if load_model_fn is not None:
        load_model_fn(_need(path, MODEL_DIR))
    if optimizer is not None:
        optimizer.load_state_dict(_torch_load(_need(path, OPTIMIZER_FILE)))
    if scheduler is not None:
        scheduler.load_state_dict(_torch_load(_need(path, SCHEDULER_FILE)))
    if restore_rng:
        _set_rng_state(_torch_load(_need(path, RNG_FILE)))
    return _torch_load(_need(path, EXTRA_FILE))


# ----------------------------------------------------------------------------- helpers


def _need(ckpt: Path, name: str) -> Path:
    if not (ckpt / name).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} has no {name}: it was saved without that part")
    return ckpt / name


def _torch_load(path: Path) -> Any:
    # weights_only: a checkpoint is data, loading it must not run code.
    return torch.load(path, map_location="cpu", weights_only=True)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings) or are not contiguous:
    copy the second and later users of a storage, keep the first as is."""
    out, seen = {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        out[name] = tensor.contiguous()
    return out


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's key array as a list: loadable with weights_only=True
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(
                "checkpoint has CUDA RNG states for another device count: not restored", stacklevel=3
            )


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (same step saved again) is moved aside first
    and deleted only after the new one is in place."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f".old-{final.name}-{secrets.token_hex(4)}")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    for p in root.iterdir():
        if not p.is_dir():
            continue
        if p.name.startswith(".old-step-"):
            # A crash inside _move_into_place: put the old one back if its replacement never arrived.
            original = root / p.name[len(".old-") :].rsplit("-", 1)[0]
            if not original.exists():
                os.rename(p, original)
                continue
        if p.name.startswith(_LEFTOVER_PREFIXES):
            shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, keep_last: int | None, keep: Path) -> None:
    if keep_last is None:
        return
    others = [p for p in list_checkpoints(root) if p != keep]
    for old in others[: max(0, len(others) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
