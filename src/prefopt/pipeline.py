"""`prefopt run`: every stage in order; a complete stage is skipped, a partial one resumed.

Stages talk only through their folders, so this is a plain loop: killing it at any point and
starting it again finishes with the same results.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from prefopt.config import Config
from prefopt.stage import stage_done

STAGES = ("sft", "reward", "ppo", "eval")
ENTRY = {
    "sft": ("prefopt.sft.train", "train"),
    "reward": ("prefopt.reward.train", "train"),
    "ppo": ("prefopt.ppo.train", "train"),
    "eval": ("prefopt.eval.evaluate", "run"),
}


def run_stage(cfg: Config, name: str) -> Path:
    module, func = ENTRY[name]
    return getattr(importlib.import_module(module), func)(cfg)


def run_pipeline(cfg: Config, stages: tuple[str, ...] = STAGES, report: bool = True) -> Path:
    """Run the stages not yet complete, then build the report. Returns the run folder."""
    for name in stages:
        if stage_done(cfg, name):
            print(f"[run] {name}: complete, skipped", flush=True)
            continue
        print(f"[run] {name}: starting", flush=True)
        run_stage(cfg, name)
    if report:
        from prefopt.report.build import build_report, summary_markdown

        path = build_report(cfg.run_dir)
        print(summary_markdown(cfg.run_dir))
        print(f"[run] report: {path}")
    return cfg.run_dir
