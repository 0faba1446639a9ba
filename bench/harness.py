"""Glue between prefopt's stages and the peer (TRL) harness in `../shared/peer-bench`.

The harness's own `common.py` is imported, so the calibration probe, RSS reading and the CPU-steal
figures are the very same code on both sides. What prefopt adds is `LoopClock`: the stage functions
bundle setup and loop, so the bench swaps a stage module's `progress` bar for a timed one. The bar is
created right before the loop, `update(1)` is called at the end of every optimizer step (PPO: every
update) and `close()` right after the loop: exactly the span TRL's `trainer.train()` covers.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = Path(os.environ.get("PEER_BENCH_DIR", REPO.parent / "shared" / "peer-bench"))
ARTIFACTS = Path(os.environ.get("PEER_BENCH_ARTIFACTS", "/tmp/peer_bench_artifacts"))
RESULTS = Path(os.environ.get("PEER_BENCH_RESULTS", "/tmp/peer_bench_results.jsonl"))
WORK = Path(os.environ.get("PREFOPT_BENCH_WORK", "/tmp/prefopt_bench"))


def peer_common():
    """The harness's `common` module (it puts its folder on sys.path and imports `workload`)."""
    if not (PEER_DIR / "common.py").is_file():
        sys.exit(f"peer harness not found at {PEER_DIR} (set PEER_BENCH_DIR)")
    os.environ.setdefault("PEER_BENCH_ARTIFACTS", str(ARTIFACTS))
    os.environ.setdefault("PEER_BENCH_RESULTS", str(RESULTS))
    sys.path.insert(0, str(PEER_DIR))
    return importlib.import_module("common")


@dataclass
class LoopClock:
    """Wall time of a stage's training loop, per-step ends, and the noise probe around it."""

    common: Any
    t_probe: float | None = None  # end of setup: the calibration probe starts here
    t_begin: float | None = None
    t_end: float | None = None
    step_ends: list[float] = field(default_factory=list)
    env: dict | None = None
    env_after: dict | None = None

    @property
    def running(self) -> bool:
        return self.t_begin is not None and self.t_end is None

    @property
    def wall(self) -> float:
        return self.t_end - self.t_begin

    def install(self, module) -> None:
        """Replace `module.progress` (the stage's bar factory) by one whose bar times the loop."""
        original = module.progress

        def timed_progress(*args, **kwargs):
            bar = original(*args, **kwargs)
            if self.t_begin is not None:  # only the first bar of the stage is its training loop
                return bar
            self.t_probe = time.perf_counter()
            self.env = self.common.env_begin()  # calibration probe + RSS, just before the loop
            self.t_begin = time.perf_counter()
            return _TimedBar(bar, self)

        module.progress = timed_progress

    def step_timer(self):
        """A StepTimer-like object for the harness's `finish` (first step, steady span)."""
        return _Steps(self.t_begin, self.step_ends)


@dataclass
class _Steps:
    t_begin: float
    step_ends: list[float]


class _TimedBar:
    def __init__(self, bar, clock: LoopClock):
        self._bar, self._clock = bar, clock

    def update(self, n: int = 1) -> None:
        if n and self._clock.running:
            self._clock.step_ends.append(time.perf_counter())
        self._bar.update(n)

    def close(self) -> None:
        clock = self._clock
        if clock.running:
            clock.t_end = time.perf_counter()
            clock.env_after = clock.common.env_end(clock.env)  # probe again, right after the loop
        self._bar.close()

    def __getattr__(self, name: str):
        return getattr(self._bar, name)


def versions(common) -> dict:
    """The harness's versions plus prefopt's; `trl` is a string so `summarize.py` can sort it."""
    import importlib.metadata as md

    out = common.versions()
    out["trl"] = "none (prefopt)"
    out["prefopt"] = md.version("prefopt")
    return out


def finish(common, name: str, res: dict, clock: LoopClock, setup_s: float, head_keys: tuple) -> dict:
    """Same record and RESULT line as the harness's `common.finish`, for a prefopt run."""
    res.update(clock.env_after or {})
    steps = clock.step_ends
    if len(steps) >= 2:
        res["steps"] = len(steps)
        res["first_step_s"] = round(steps[0] - clock.t_begin, 3)
        res["steady_s"] = round(steps[-1] - steps[0], 3)
    res["setup_s"] = round(setup_s, 2)
    res["peak_rss_mib"] = round(common.peak_rss_mib(), 1)
    res["rss_before_train_mib"] = round(clock.env["rss_before_train"], 1)
    res["versions"] = versions(common)
    res["bench"] = name
    res["impl"] = "prefopt"
    res["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = Path(os.environ["PEER_BENCH_RESULTS"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(res, sort_keys=True) + "\n")
    head = {k: res[k] for k in head_keys if k in res}
    head["peak_rss_mib"] = res["peak_rss_mib"]
    head["calib_gflops"] = [res.get("calib_gflops_before"), res.get("calib_gflops_after")]
    print("RESULT " + name + " " + json.dumps(head), flush=True)
    return res
