"""PPO peak RSS and time on a workload shaped like the real job: the 151,936-row Qwen LM head.

    .venv/bin/python bench/real_vocab.py                       # batches 4 8 16 32, both implementations
    .venv/bin/python bench/real_vocab.py --batches 4 8 --updates 1 --png docs/real_vocab_rss.png

Workload: the real Qwen tokenizer (`../shared/data/qwen-tokenizer`, EOS `<|endoftext|>`, a `<|pad|>` added),
real TL;DR posts (`../shared/data/tldr/tldr_valid_1945.trl_prompt_completion.jsonl`) smart-truncated to
512-token prompts, 53-token responses, a tiny seeded Qwen3 trunk (hidden 64, 2 layers) with the real
vocabulary's tied 151,936 x 64 embedding / LM head. One prefopt PPO update per run (`--updates`), 4 PPO
epochs, one minibatch, micro-batch = the rollout batch (as TRL's default local_rollout_forward_batch_size
and per-device batch), four full models (`--lora`: one shared base).

Two implementations of the log-probability step, everything else identical (same stage, same code):
  prefopt  `ops.chunked_token_logprobs`: logits of 512 positions at a time, recomputed in the backward;
  naive    what TRL does: the full [B, T, V] float32 logits, log_softmax over them, entropy from them,
           and the generation's per-step logits (`output_scores`) kept until the rollout is scored.
Each (implementation, batch) runs in its own process, so peak RSS is that process's ru_maxrss; the
implementations alternate. Prints a table and writes the curve to a PNG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import harness
import prep

DATA = harness.REPO.parent / "shared" / "data"
TOKENIZER = DATA / "qwen-tokenizer"
PROMPTS = DATA / "tldr" / "tldr_valid_1945.trl_prompt_completion.jsonl"
ROOT = harness.WORK / "real_vocab"
TRUNK = dict(
    vocab_size=151_936,
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


# ---------------------------------------------------------------- one-off preparation (child process)


def prepare(lora: bool) -> Path:
    """Seeded base model + prefopt `sft/model` and `reward/model` folders (untrained)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from prefopt.config import PeftConfig
    from prefopt.models.adapters import apply_peft, save_policy
    from prefopt.models.heads import ScalarHeadModel
    from prefopt.models.load import load_causal_lm, load_tokenizer
    from prefopt.reward.model import save_reward_model

    run = ROOT / ("lora" if lora else "full")
    if (run / "READY").is_file():
        return run
    tok = load_tokenizer(str(TOKENIZER), eos_token="<|endoftext|>")
    base = ROOT / "base"
    torch.manual_seed(1234)
    cfg = Qwen3Config(
        **TRUNK, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None
    )
    Qwen3ForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    sft_dir = run / "sft" / "model"
    save_policy(
        load_causal_lm(str(base), tok, dtype="float32", device="cpu"),
        sft_dir,
        PeftConfig(method="none"),
        str(base),
        tok,
    )
    causal = load_causal_lm(str(sft_dir), tok, dtype="float32", device="cpu")
    wrapper = apply_peft(causal, PeftConfig(**prep.LORA)) if lora else None
    torch.manual_seed(4321)
    rm = ScalarHeadModel(causal)
    save_reward_model(rm, run / "reward" / "model", peft_wrapper=wrapper, base=sft_dir, tokenizer=tok)
    (run / "READY").write_text("ok\n")
    return run


# ---------------------------------------------------------------- the naive (TRL-like) log-prob step


def full_logits_logprobs(hidden, weight, tokens, temperature=1.0, with_entropy=False, lm_head_bias=None, **_):
    """log p(tokens) from the full [B, T, V] float32 logits (TRL's way); same results as
    `ops.chunked_token_logprobs` (its chunking arguments are ignored). Entropy, as TRL computes it
    for its logs, without gradient."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, lm_head_bias).float() / temperature  # [B, T, V]
    logp = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    out = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
    return out, entropy


class KeepScores:
    """Wraps the generating model and keeps every step's logits, as `generate(output_scores=True)` does."""

    def __init__(self, model, kept: list):
        self._model, self._kept = model, kept

    def __call__(self, *args, **kwargs):
        out = self._model(*args, **kwargs)
        self._kept.append(out.logits[:, -1:, :].float())
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)


def install_naive(stage, rollout) -> None:
    import contextlib

    rollout.chunked_token_logprobs = full_logits_logprobs
    kept: list = []
    build, collect = stage.build_roles, stage.collect

    def build_keeping_scores(*args, **kwargs):
        roles = build(*args, **kwargs)
        original = roles.generation_model

        @contextlib.contextmanager
        def generation_model():
            with original() as lm:
                yield KeepScores(lm, kept)

        roles.generation_model = generation_model
        return roles

    def collect_then_drop(*args, **kwargs):
        ro = collect(*args, **kwargs)  # the scores stay alive through the whole rollout, as in TRL
        kept.clear()
        return ro

    stage.build_roles, stage.collect = build_keeping_scores, collect_then_drop


# ---------------------------------------------------------------- one measured run (child process)


def run_one(impl: str, batch: int, updates: int, lora: bool) -> dict:
    common = harness.peer_common()
    common.quiet()
    run = ROOT / ("lora" if lora else "full")
    import shutil

    import prefopt.ppo.rollout as rollout
    import prefopt.ppo.train as stage
    from prefopt.config import build_config

    name = f"rv_{impl}_{batch}"
    work = ROOT / "runs" / name
    shutil.rmtree(work, ignore_errors=True)
    for part in ("sft", "reward"):
        shutil.copytree(run / part, work / part)
    if impl == "naive":
        install_naive(stage, rollout)
    clock = harness.LoopClock(common)
    clock.install(stage)
    cfg = {
        "name": name,
        "output_dir": str(ROOT / "runs"),
        "seed": 0,
        "model": {"name_or_path": str(ROOT / "base"), "dtype": "float32"},
        "data": {"sft_source": str(PROMPTS), "limit_train": batch * updates, "max_prompt_tokens": 512},
        "peft": dict(prep.LORA) if lora else {"method": "none"},
        "ppo": {
            "total_episodes": batch * updates,
            "rollout_batch_size": batch,
            "num_minibatches": 1,
            "micro_batch_size": batch,
            "ppo_epochs": 4,
            "response_length": 53,
            "sample_every": 10_000,
        },
    }
    stage.train(build_config(cfg))
    env = clock.env_after or {}
    return {
        "impl": impl,
        "batch": batch,
        "updates": updates,
        "lora": lora,
        "wall_s": round(clock.wall, 2),
        "s_per_update": round(clock.wall / updates, 2),
        "peak_rss_mib": round(common.peak_rss_mib(), 1),
        "rss_before_loop_mib": round(clock.env["rss_before_train"], 1),
        "calib_gflops": [env.get("calib_gflops_before"), env.get("calib_gflops_after")],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ---------------------------------------------------------------- driver


def plot(rows: list[dict], png: Path, before: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    curves = [("prefopt", "o-", rows, "prefopt (chunked log-probs)")]
    curves.append(("naive", "s--", rows, "full [B,T,V] fp32 logits (TRL-like)"))
    if before:
        curves.append(("prefopt", "^:", before, "prefopt before the entropy/chunk fix"))
    for impl, style, source, label in curves:
        pts = sorted((r["batch"], r["peak_rss_mib"], r["s_per_update"]) for r in source if r["impl"] == impl)
        if not pts:
            continue
        axes[0].plot([p[0] for p in pts], [p[1] / 1024 for p in pts], style, label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
    for ax, ylabel in zip(axes, ("peak RSS (GiB)", "seconds per PPO update"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rollout batch (= micro-batch)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("PPO, 151,936-token Qwen LM head, 512-token prompts, 53-token responses (2-core CPU)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def table(rows: list[dict]) -> str:
    out = [
        "| batch | prefopt peak RSS MiB | naive peak RSS MiB | ratio | prefopt s/update | naive s/update | calib (prefopt; naive) |"
    ]
    out.append("|---|---|---|---|---|---|---|")
    for b in sorted({r["batch"] for r in rows}):
        p = next((r for r in rows if r["batch"] == b and r["impl"] == "prefopt"), None)
        n = next((r for r in rows if r["batch"] == b and r["impl"] == "naive"), None)
        ratio = f"{p['peak_rss_mib'] / n['peak_rss_mib']:.2f}x" if p and n else "-"

        def get(r, k):
            return r[k] if r else "-"

        cal = "; ".join("-".join(f"{x:.0f}" for x in r["calib_gflops"]) if r else "-" for r in (p, n))
        out.append(
            f"| {b} | {get(p, 'peak_rss_mib')} | {get(n, 'peak_rss_mib')} | {ratio} | "
            f"{get(p, 's_per_update')} | {get(n, 's_per_update')} | {cal} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--impls", nargs="+", choices=("prefopt", "naive"), default=["prefopt", "naive"])
    ap.add_argument("--updates", type=int, default=1)
    ap.add_argument(
        "--lora", action="store_true", help="one shared base + LoRA adapters (default: 4 full models)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "results.jsonl")
    ap.add_argument("--png", type=Path, default=harness.REPO / "docs" / "real_vocab_rss.png")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG and table from --out")
    ap.add_argument("--before", type=Path, default=None, help="jsonl of an earlier prefopt curve to draw too")
    a = ap.parse_args()
    if not (TOKENIZER.is_dir() and PROMPTS.is_file()):
        sys.exit(f"real data not found under {DATA}")
    if a.prepare:
        print(prepare(a.lora))
        return
    if a.child:
        print("ROW " + json.dumps(run_one(a.child[0], int(a.child[1]), a.updates, a.lora)), flush=True)
        return
    if not a.plot_only:
        me = [sys.executable, __file__] + (["--lora"] if a.lora else [])
        subprocess.run([*me, "--prepare"], check=True, stdout=subprocess.DEVNULL)
        for i, b in enumerate(a.batches):
            for impl in a.impls if i % 2 == 0 else a.impls[::-1]:  # alternate which side goes first
                t0 = time.time()
                proc = subprocess.run(
                    [*me, "--updates", str(a.updates), "--child", impl, str(b)],
                    capture_output=True,
                    text=True,
                )
                rows = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
                if proc.returncode or not rows:
                    print(f"{impl} batch {b}: FAILED rc={proc.returncode}\n{proc.stderr[-2000:]}", flush=True)
                    continue
                with open(a.out, "a") as fh:
                    fh.write(rows[0] + "\n")
                print(f"{impl:8s} batch {b:3d} ({time.time() - t0:.0f}s): {rows[0]}", flush=True)
    rows = [json.loads(line) for line in a.out.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["lora"] == a.lora]
    latest = {(r["impl"], r["batch"]): r for r in rows}  # the newest run of each point
    print(table(list(latest.values())))
    before = None
    if a.before:
        before = [json.loads(line) for line in a.before.read_text().splitlines() if line.strip()]
        before = [r for r in before if r["lora"] == a.lora]
    plot(list(latest.values()), a.png, before)
    print(f"curve -> {a.png}")


if __name__ == "__main__":
    main()
