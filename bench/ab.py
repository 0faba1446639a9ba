"""prefopt vs TRL on the peer harness's workload, interleaved A/B/A/B, with medians, spreads and ratios.

    .venv/bin/python bench/ab.py --rounds 3            # sft_bf16, reward_bf16, ppo_mb4_bf16, ppo_mb4
    .venv/bin/python bench/ab.py --rounds 1 --only sft reward
    .venv/bin/python bench/ab.py --summarize /tmp/prefopt_ab_X.jsonl   # tables of an earlier session
    .venv/bin/python bench/ab.py --rounds 3 --only ppo_mb4_bf16 ppo_floor_bf16 ppo_floor_bf16_eager

Each round runs every selected comparison's TRL script and prefopt's `bench_prefopt.py` one after the
other, TRL first in odd rounds and prefopt first in even ones, so slow phases of a shared machine hit
both sides. Every run is its own process (peak RSS = its ru_maxrss). The TRL side needs the harness's
venvs (`/tmp/peer_venv`, `/tmp/peer_venv_ppo`, see ../shared/peer-bench/README.md). All records go to
one jsonl file; logs to `<results>.logs/`. The table gives, per comparison, the median of every
metric (min-max across rounds), the ratio of the medians, the median of the per-round ratios (both
sides measured minutes apart), the issue's target, and the calibration probe of every run
(fp32 GFLOP/s before-after the loop: about 180-200 on a quiet 2-core VM; much lower = a noisy run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness


@dataclass(frozen=True)
class Comparison:
    key: str
    trl_bench: str
    trl_cmd: tuple[str, ...]  # venv name, script, args
    prefopt_bench: str
    prefopt_args: tuple[str, ...]
    metric: str  # the throughput the target is about
    speed_target: float | None  # prefopt / TRL, at least
    rss_target: float | None  # prefopt / TRL peak RSS, at most
    script: str = "bench_prefopt.py"  # the non-TRL side: prefopt, or the PPO floor (not an implementation)


COMPARISONS = {
    c.key: c
    for c in (
        Comparison(
            "sft", "sft_full_nogc", ("main", "bench_sft.py", "--no-gc"), "sft_full_prefopt",
            ("--stage", "sft"), "tokens_per_s", 1.2, 0.7,
        ),
        Comparison(
            "sft_lora", "sft_lora_nogc", ("main", "bench_sft.py", "--lora", "--no-gc"), "sft_lora_prefopt",
            ("--stage", "sft", "--lora"), "tokens_per_s", None, None,
        ),
        Comparison(
            "reward", "reward_nogc", ("main", "bench_reward.py", "--no-gc"), "reward_prefopt",
            ("--stage", "reward"), "pairs_per_s", 1.3, None,
        ),
        Comparison(
            "ppo", "ppo", ("ppo", "bench_ppo.py"), "ppo_prefopt",
            ("--stage", "ppo", "--ppo-epochs", "4"), "episodes_per_s", 2.0, 0.6,
        ),
        Comparison(
            "ppo_lora", "ppo", ("ppo", "bench_ppo.py"), "ppo_lora_prefopt",
            ("--stage", "ppo", "--ppo-epochs", "4", "--lora"), "episodes_per_s", 2.0, 0.6,
        ),
        # the same 16-episode minibatch and optimizer step, accumulated over 4 micro-batches of 4 rows
        # (grouped by prompt length): identical gradients, a quarter of the live activations
        Comparison(
            "ppo_mb4", "ppo", ("ppo", "bench_ppo.py"), "ppo_prefopt_mb4",
            ("--stage", "ppo", "--ppo-epochs", "4", "--micro-batch", "4"), "episodes_per_s", 2.0, 0.6,
        ),
        Comparison(
            "ppo_lora_mb4", "ppo", ("ppo", "bench_ppo.py"), "ppo_lora_prefopt_mb4",
            ("--stage", "ppo", "--ppo-epochs", "4", "--lora", "--micro-batch", "4"), "episodes_per_s", 2.0,
            0.6,
        ),
        # like for like: TRL's configs default to bf16=True, which autocasts on this CPU too
        Comparison(
            "sft_bf16", "sft_full_nogc", ("main", "bench_sft.py", "--no-gc"), "sft_full_prefopt_bf16",
            ("--stage", "sft", "--bf16"), "tokens_per_s", 1.2, 0.7,
        ),
        Comparison(
            "reward_bf16", "reward_nogc", ("main", "bench_reward.py", "--no-gc"), "reward_prefopt_bf16",
            ("--stage", "reward", "--bf16"), "pairs_per_s", 1.3, None,
        ),
        Comparison(
            "ppo_mb4_bf16", "ppo", ("ppo", "bench_ppo.py"), "ppo_prefopt_mb4_bf16",
            ("--stage", "ppo", "--ppo-epochs", "4", "--micro-batch", "4", "--bf16"), "episodes_per_s", 2.0, 0.6,
        ),
        Comparison(
            "ppo_mb4_bf16_eager", "ppo", ("ppo", "bench_ppo.py"), "ppo_prefopt_mb4_bf16_eager",
            ("--stage", "ppo", "--ppo-epochs", "4", "--micro-batch", "4", "--bf16", "--attn", "eager"),
            "episodes_per_s", 2.0, 0.6,
        ),
        # not prefopt: the passes four-model PPO cannot skip, in plain PyTorch, generation left out
        # (bench/ppo_floor.py); its ratio to TRL bounds any implementation's on these kernels
        Comparison(
            "ppo_floor_bf16", "ppo", ("ppo", "bench_ppo.py"), "ppo_floor_bf16", ("--bf16",), "episodes_per_s",
            None, None, "ppo_floor.py",
        ),
        Comparison(
            "ppo_floor_bf16_eager", "ppo", ("ppo", "bench_ppo.py"), "ppo_floor_bf16_eager",
            ("--bf16", "--attn", "eager"), "episodes_per_s", None, None, "ppo_floor.py",
        ),
    )
}  # fmt: skip
DEFAULT = ("sft_bf16", "reward_bf16", "ppo_mb4_bf16", "ppo_mb4")
VENVS = {
    "main": os.environ.get("PEER_VENV", "/tmp/peer_venv"),
    "ppo": os.environ.get("PEER_VENV_PPO", "/tmp/peer_venv_ppo"),
}
EXTRA = {
    "sft": ("samples_per_s", "steady_tokens_per_s"),
    "reward": ("tokens_per_s",),
    "ppo": ("gen_fraction",),
}


# ---------------------------------------------------------------- running


def jobs_for_round(selected: list[Comparison], round_no: int) -> list[tuple[str, str, list[str], Path]]:
    """(side, bench, argv, cwd) in run order; a TRL run shared by two comparisons runs once."""
    jobs, seen = [], set()
    for c in selected:
        trl = ("trl", c.trl_bench, [f"{VENVS[c.trl_cmd[0]]}/bin/python", *c.trl_cmd[1:]], harness.PEER_DIR)
        ours = (
            "prefopt" if c.script == "bench_prefopt.py" else "floor",
            c.prefopt_bench,
            [sys.executable, str(Path(__file__).with_name(c.script)), *c.prefopt_args],
            harness.REPO,
        )
        pair = [trl, ours] if round_no % 2 else [ours, trl]
        for job in pair:
            if job[1] not in seen:
                seen.add(job[1])
                jobs.append(job)
    return jobs


def run_job(job, round_no: int, results: Path, logs: Path) -> None:
    side, bench, argv, cwd = job
    env = dict(os.environ, PEER_BENCH_RESULTS=str(results), PEER_BENCH_ARTIFACTS=str(harness.ARTIFACTS))
    log = logs / f"r{round_no}_{bench}.log"
    t0 = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    last = log.read_text().strip().splitlines()[-1:] or [""]
    status = "ok" if rc == 0 else f"FAILED rc={rc} (see {log})"
    print(
        f"[round {round_no}] {side:7s} {bench:20s} {time.time() - t0:6.0f}s {status}: {last[0][:160]}",
        flush=True,
    )


# ---------------------------------------------------------------- summary


def load_runs(path: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            runs.setdefault(r["bench"], []).append(r)
    return runs


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.4g}" if len(values) == 1 else f"{med:.4g} ({min(values):.4g}-{max(values):.4g})"


def ratio_cells(ours: list[dict], theirs: list[dict], key: str) -> tuple[str, float | None]:
    """Ratio of medians, and the median of same-round ratios (runs paired by order)."""
    a = [r[key] for r in ours if r.get(key) is not None]
    b = [r[key] for r in theirs if r.get(key) is not None]
    if not a or not b:
        return "-", None
    of_medians = statistics.median(a) / statistics.median(b)
    paired = [x / y for x, y in zip(a, b, strict=False)]
    text = f"{of_medians:.2f}x"
    if len(paired) > 1:
        text += f" (per round {min(paired):.2f}-{max(paired):.2f})"
    return text, of_medians


def calib(runs: list[dict]) -> str:
    return " / ".join(
        f"{r.get('calib_gflops_before', 0):.0f}-{r.get('calib_gflops_after', 0):.0f}" for r in runs
    )


def verdict(value: float | None, target: float | None, at_least: bool) -> str:
    if target is None or value is None:
        return ""
    ok = value >= target if at_least else value <= target
    return f"{'meets' if ok else 'misses'} {'>=' if at_least else '<='} {target}x"


def summarize(path: Path, keys: list[str]) -> str:
    runs = load_runs(path)
    lines = [
        f"Session {path} (median, then min-max over runs; ratio = prefopt / TRL).",
        "",
        "| comparison | metric | TRL | prefopt | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for key in keys:
        c = COMPARISONS[key]
        theirs, ours = runs.get(c.trl_bench, []), runs.get(c.prefopt_bench, [])
        if not theirs and not ours:
            continue
        kind = "ppo" if key.startswith("ppo") else key.split("_")[0]
        label = f"{key} ({c.trl_bench} vs {c.prefopt_bench})"
        for metric in (c.metric, *EXTRA.get(kind, ()), "peak_rss_mib", "wall_s"):
            ratio, value = ratio_cells(ours, theirs, metric)
            target = ""
            if metric == c.metric:
                target = verdict(value, c.speed_target, at_least=True)
            elif metric == "peak_rss_mib":
                target = verdict(value, c.rss_target, at_least=False)
            a = cell([r[metric] for r in theirs if r.get(metric) is not None])
            b = cell([r[metric] for r in ours if r.get(metric) is not None])
            lines.append(f"| {label} | {metric} | {a} | {b} | {ratio} | {target} |")
            label = ""
        lines.append(f"| | calib GFLOP/s (before-after) | {calib(theirs)} | {calib(ours)} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), default=list(DEFAULT))
    ap.add_argument("--results", type=Path, default=None, help="jsonl of this session (default: a new file)")
    ap.add_argument("--summarize", type=Path, default=None, help="only print the tables of this jsonl")
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.summarize, a.only))
        return
    results = a.results or Path(f"/tmp/prefopt_ab_{time.strftime('%Y%m%d_%H%M%S')}.jsonl")
    logs = results.with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    common = harness.peer_common()
    common.workload.ensure_artifacts()  # build once, before any timed run
    selected = [COMPARISONS[k] for k in a.only]
    print(f"results -> {results}, logs -> {logs}", flush=True)
    for round_no in range(1, a.rounds + 1):
        for job in jobs_for_round(selected, round_no):
            run_job(job, round_no, results, logs)
    print()
    print(summarize(results, a.only))


if __name__ == "__main__":
    main()
