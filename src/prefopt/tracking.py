"""Metrics and progress: ``metrics.jsonl`` + TensorBoard per stage, and progress bars that behave in logs.

Only the main process of a distributed job writes: both :class:`Tracker` and :func:`progress` take an
``enabled`` flag, which by default is :func:`is_main_process` (``RANK`` unset or 0).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from prefopt.runs import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun/accelerate job (they set ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------- metrics


class Tracker:
    """Appends ``{"step", "time", **metrics}`` lines to ``stage_dir/metrics.jsonl`` (flushed per line,
    so a crash loses nothing already logged) and the same scalars to TensorBoard in ``stage_dir/tb``.

    ``resume_step``: when resuming from a checkpoint at that step, records logged after it by the run
    that died are dropped (from both files), so curves have no duplicated steps.
    """

    def __init__(
        self,
        stage_dir: str | Path,
        enabled: bool | None = None,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = is_main_process() if enabled is None else enabled
        self.path = Path(stage_dir) / METRICS_FILE
        self._file: IO[str] | None = None
        self._tb: Any = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across log() calls
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when wanted

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(Path(stage_dir) / TB_DIR), purge_step=purge, flush_secs=10)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step``. Values may be Python numbers, numpy or 0-dim torch scalars."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"Tracker for {self.path} is closed")
        record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        for key, value in metrics.items():
            if key in ("step", "time"):
                raise ValueError(f"metric name {key!r} is reserved")
            record[key] = value if isinstance(value, int) and not isinstance(value, bool) else float(value)
        self._file.write(json.dumps(record) + "\n")  # NaN/inf are written as JSON5-style NaN/Infinity
        self._file.flush()
        if self._tb is not None:
            for key in metrics:
                self._tb.add_scalar(key, record[key], global_step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of ``<stage_dir>/metrics.jsonl``), in order.

    A cut-off last line (the writer died mid-line) is skipped; a bad line elsewhere raises.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # no newline after it: an unfinished write
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line: {line[:80]!r}") from err
    return records


# ----------------------------------------------------------------------------- progress


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    *,
    enabled: bool | None = None,
    file: IO[str] | None = None,
    every_pct: float = 10.0,
    every_s: float = 10.0,
) -> Any:
    """A progress bar over ``iterable`` (or a manual one: ``bar.update(n)``, ``bar.close()``).

    On a terminal: a tqdm bar with rate and ETA. Elsewhere (logs, CI, notebooks' captured output):
    plain lines every ``every_pct`` percent or ``every_s`` seconds, without carriage returns. Silent
    but still iterating when ``enabled`` is false (default: on the main process only). Both kinds
    support iteration, ``update(n)``, ``set_postfix(**values)``, ``close()`` and ``with``.
    """
    enabled = is_main_process() if enabled is None else enabled
    file = sys.stderr if file is None else file
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled and _is_tty(file):
        return tqdm(iterable, total=total, desc=desc or None, file=file, dynamic_ncols=True)
    return PlainProgress(
        iterable, total, desc, enabled=enabled, file=file, every_pct=every_pct, every_s=every_s
    )


def _is_tty(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """Progress as plain log lines: ``desc: 30/100 (30%) | 12.5 it/s | elapsed 0:02 | eta 0:06 | loss=0.5``."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        total: int | None,
        desc: str = "",
        *,
        enabled: bool = True,
        file: IO[str] | None = None,
        every_pct: float = 10.0,
        every_s: float = 10.0,
    ):
        self.iterable, self.total, self.desc, self.enabled = iterable, total, desc, enabled
        self.file = sys.stderr if file is None else file
        self.every_pct, self.every_s = every_pct, every_s
        self.n = 0
        self._start = self._last_emit = time.monotonic()
        self._emitted_n = 0
        self._next_pct = every_pct
        self._postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress() was made without an iterable: use update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        now = time.monotonic()
        pct = 100.0 * self.n / self.total if self.total else None
        if now - self._last_emit >= self.every_s or (pct is not None and pct >= self._next_pct):
            self._emit(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the following lines (e.g. the current loss)."""
        shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        self._postfix = " | " + " ".join(shown) if values else ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.n != self._emitted_n:
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = (self.total - self.n) / rate if rate > 0 else math.inf
            line = f"{head}{self.n}/{self.total} ({pct:.0f}%) | {rate:.3g} it/s | elapsed {_hms(elapsed)} | eta {_hms(eta)}"
            self._next_pct = (math.floor(pct / self.every_pct) + 1) * self.every_pct
        else:
            line = f"{head}{self.n} it | {rate:.3g} it/s | elapsed {_hms(elapsed)}"
        print(line + self._postfix, file=self.file, flush=True)
        self._last_emit, self._emitted_n = now, self.n

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
