"""Which base model a run starts from: a Hub id / local folder, or the testbed's tiny Qwen3."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefopt.config import Config
from prefopt.runs import is_complete, mark_complete


def resolve_base(cfg: Config) -> str:
    """Path or Hub id of the base model. For `testbed-tiny` the cached base is built when missing
    and copied into `<run>/base/` so the run folder is self-contained."""
    if cfg.model.preset == "none":
        return cfg.model.name_or_path
    from prefopt.models.tiny_base import ensure_tiny_base

    cached = ensure_tiny_base(
        Path(cfg.model.cache_dir),
        seed=cfg.seed,
        pretrain_steps=cfg.model.tiny_pretrain_steps,
        pretrain_seconds=cfg.model.tiny_pretrain_seconds,
    )
    local = cfg.run_dir / "base"
    if not (local / "config.json").is_file():
        tmp = local.with_name("base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(cached, tmp)
        tmp.rename(local)
    if not is_complete(local):
        from prefopt.models.tiny_base import read_marker

        mark_complete(local, {"source": str(cached), **(read_marker(cached) or {})})
    return str(local)


def tokenizer_source(cfg: Config, base: str) -> str:
    return cfg.model.tokenizer or base
