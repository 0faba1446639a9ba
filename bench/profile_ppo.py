"""Where prefopt's PPO spends its loop time on the harness workload: py-spy samples, grouped by phase.

    .venv/bin/python bench/profile_ppo.py [--lora] [--bf16] [--micro-batch 4] [--episodes 32] [--py-spy /tmp/peer_venv/bin/py-spy]
    .venv/bin/python bench/profile_ppo.py --folded /tmp/prefopt_ppo.folded     # re-read a recording

Records `bench_prefopt.py --stage ppo` with `py-spy record --format raw` (collapsed stacks; py-spy from
the harness venv: `/tmp/peer_venv/bin/pip install py-spy`), then puts every sample of the training
loop into one phase by the prefopt functions on its stack, and prints each phase's share of the loop.
Native time (matmuls, autograd) is charged to the Python frame that called it, which is what a phase
is about. Setup (imports, model loading, tokenisation) is counted apart and left out of the shares.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (phase, function names that mark it), checked in order: the first phase with a name on the stack wins
PHASES = (
    ("rollout: generation (sample_batch)", ("sample_batch",)),
    ("rollout: policy + ref log-probs", ("collect>response_logprobs",)),
    ("rollout: value forward", ("collect>response_values",)),
    ("rollout: reward forward", ("collect>reward_score",)),
    ("train: backward (policy + value)", ("_minibatch_step>backward",)),
    (
        "train: optimizer step + grad clip",
        ("_minibatch_step>profile_hook_step", "_minibatch_step>clip_grad_norm_"),
    ),
    (
        "train: policy forward, LM head log-probs",
        ("_minibatch_step>response_logprobs>chunked_token_logprobs",),
    ),
    ("train: policy forward, trunk", ("_minibatch_step>response_logprobs",)),
    ("train: value forward", ("_minibatch_step>response_values",)),
    ("train: losses, stats, other", ("_minibatch_step",)),
    ("metrics, logging, samples", ("_rollout_metrics", "_write_samples", "log", "set_postfix")),
)


def loop_lines() -> range:
    """Source lines of the PPO stage's update loop (from `for update in` to `bar.close()`)."""
    import inspect

    import prefopt.ppo.train as stage

    lines, first = inspect.getsourcelines(stage.train)
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("for update in range"))
    end = next(i for i, ln in enumerate(lines) if ln.strip() == "bar.close()")
    return range(first + start, first + end)


def frames(stack: str) -> list[tuple[str, str]]:
    """py-spy raw frames `func (file:line)`, outermost first -> (function, "file:line")."""
    out = []
    for f in stack.split(";"):
        name, _, where = f.partition(" (")
        out.append((name.strip(), where.rstrip(")")))
    return out


def has_chain(names: list[str], chain: str) -> bool:
    """`a>b>c`: a, then (deeper) b, then c appear on the stack in that order. A part matches a frame's
    name or one dotted piece of its qualified name (`Optimizer.profile_hook_step.<locals>.wrapper`)."""
    pos = 0
    for part in chain.split(">"):
        pos = next((i + 1 for i in range(pos, len(names)) if part in (names[i], *names[i].split("."))), -1)
        if pos < 0:
            return False
    return True


def classify(stack: list[tuple[str, str]], loop: range) -> str:
    """The phase of one sample; "setup" for the stage's code before or after its update loop."""
    train = [w for n, w in stack if n == "train" and "ppo/train.py" in w]
    if not train:
        return "outside the stage (imports, bench)"
    if int(train[0].rsplit(":", 1)[1]) not in loop:
        return "setup (stage code outside the loop)"
    names = [n for n, _ in stack]
    for phase, chains in PHASES:
        if any(has_chain(names, c) for c in chains):
            return phase
    return "loop: batching, rewards, GAE, whitening, other"


NOT_LOOP = ("outside the stage (imports, bench)", "setup (stage code outside the loop)")


def shares(folded: Path) -> tuple[Counter, int]:
    counts: Counter = Counter()
    loop = loop_lines()
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[classify(frames(stack), loop)] += int(n)
    return counts, sum(v for k, v in counts.items() if k not in NOT_LOOP)


def report(folded: Path) -> str:
    counts, loop = shares(folded)
    lines = [f"py-spy samples: {sum(counts.values())} total, {loop} in the training loop", ""]
    lines += ["| phase | samples | share of loop |", "|---|---|---|"]
    for phase, n in counts.most_common():
        share = "-" if phase in NOT_LOOP else f"{100 * n / loop:.1f} %"
        lines.append(f"| {phase} | {n} | {share} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (bench_prefopt.py --bf16)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=128)
    ap.add_argument("--rate", type=int, default=50, help="samples per second")
    ap.add_argument("--py-spy", default="/tmp/peer_venv/bin/py-spy")
    ap.add_argument("--folded", type=Path, default=None, help="analyse this recording instead of recording")
    a = ap.parse_args()
    folded = a.folded
    if folded is None:
        folded = Path(f"/tmp/prefopt_ppo{'_lora' if a.lora else ''}{'_bf16' if a.bf16 else ''}.folded")
        bench = [sys.executable, str(Path(__file__).with_name("bench_prefopt.py")), "--stage", "ppo"]
        bench += ["--episodes", str(a.episodes), "--micro-batch", str(a.micro_batch)]
        bench += (["--lora"] if a.lora else []) + (["--bf16"] if a.bf16 else [])
        rec = [a.py_spy, "record", "--format", "raw", "--rate", str(a.rate), "-o", str(folded), "--", *bench]
        subprocess.run(rec, check=True)
    print(report(folded))


if __name__ == "__main__":
    main()
