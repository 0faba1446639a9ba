"""What every stage does around its algorithm: folder, lock, resolved config, tracker, resume point.

A stage reads like: `with open_stage(cfg, "sft") as st: ...algorithm...; st.finish(info)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefopt.config import Config, dump_config
from prefopt.runs import RunLock, atomic_write_text, is_complete, mark_complete, stage_dir


@dataclass
class Stage:
    cfg: Config
    name: str
    dir: Path
    accelerator: Any

    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def print(self, message: str) -> None:
        if self.is_main:
            print(f"[{self.name}] {message}", flush=True)

    def finish(self, info: dict[str, Any]) -> None:
        """Mark the stage complete (written last, so a crash before it means 'resume me')."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            mark_complete(self.dir, info)


@contextlib.contextmanager
def open_stage(cfg: Config, name: str, accelerator=None) -> Iterator[Stage]:
    """Create `<run>/<name>/`, lock it (main process), record the resolved config, seed per rank."""
    from prefopt.dist import make_accelerator, seed_everything

    mp = cfg.model.mixed_precision
    acc = accelerator or make_accelerator(None if mp == "auto" else mp)
    folder = stage_dir(cfg.run_dir, name)
    seed_everything(cfg.seed + acc.process_index)
    lock = RunLock(folder) if acc.is_main_process else contextlib.nullcontext()
    with lock:
        if acc.is_main_process:
            atomic_write_text(cfg.run_dir / "config.yaml", dump_config(cfg))
            atomic_write_text(folder / "config.yaml", dump_config(cfg))
        yield Stage(cfg, name, folder, acc)


def stage_done(cfg: Config, name: str) -> bool:
    return is_complete(cfg.run_dir / name)
