"""prefopt's SFT, reward and PPO stages on the peer harness's workload, measured the harness's way.

    .venv/bin/python bench/bench_prefopt.py --stage sft [--lora]
    .venv/bin/python bench/bench_prefopt.py --stage reward [--lora]
    .venv/bin/python bench/bench_prefopt.py --stage ppo [--ppo-epochs 4] [--lora]

Same data rows, tokenizer, initial weights, batch sizes, lengths, epochs and learning rates as
`bench_sft.py --no-gc`, `bench_reward.py --no-gc` and `bench_ppo.py` (no activation checkpointing on
either side). The stage runs unchanged through `stage.train(cfg)`; the bench only wraps a few names of
the stage module (the progress bar, the collate function, the rollout) to time the training loop and
count tokens from the collated batches. Prints the harness's `RESULT <bench> {...}` line and appends
the same record schema to `$PEER_BENCH_RESULTS` (default /tmp/peer_bench_results.jsonl), so the
harness's `summarize.py` shows both implementations side by side.

PPO: without --lora, four full models (policy, reference, value, reward), as TRL holds them; with
--lora (prefopt's default design), ONE frozen base carries the policy, value and reward adapters and
the reference is the base with adapters off. Reward and value heads are the harness's seeded heads.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness
import prep

SFT_KEYS = ("samples_per_s", "tokens_per_s", "steady_samples_per_s", "steady_tokens_per_s", "wall_s")
REWARD_KEYS = ("pairs_per_s", "tokens_per_s", "steady_pairs_per_s", "wall_s")
PPO_KEYS = (
    "episodes_per_s",
    "gen_tokens_per_s",
    "gen_only_tokens_per_s",
    "gen_fraction",
    "wall_s",
    "num_ppo_epochs",
)


def bench_name(stage: str, lora: bool, ppo_epochs: int) -> str:
    """Harness name + `_prefopt`, so `summarize.py` groups it with its TRL counterpart."""
    if stage == "sft":
        return ("sft_lora" if lora else "sft_full") + "_prefopt"
    if stage == "reward":
        return ("reward_lora" if lora else "reward") + "_prefopt"
    base = "ppo" if ppo_epochs == 4 else f"ppo_ep{ppo_epochs}"
    return base + ("_lora" if lora else "") + "_prefopt"


def base_config(
    name: str,
    art: Path,
    lora: bool,
    bf16: bool = False,
    pad_multiple: int | None = None,
    attn: str | None = None,
) -> dict:
    peft = dict(prep.LORA) if lora else {"method": "none"}
    return {
        "name": name,
        "output_dir": str(harness.WORK / "runs"),
        "seed": 42,
        "model": {
            "name_or_path": str(art / "model"),
            "tokenizer": str(art / "tokenizer"),
            "dtype": "float32",
            # fp32 arithmetic. NB: TRL's SFT/Reward/PPO configs default to bf16=True, which autocasts to
            # bf16 on this CPU (AMX): the TRL side runs bf16 matmuls. `--bf16` matches it (see
            # docs/performance.md for both)
            "mixed_precision": "bf16" if bf16 else "no",
            "gradient_checkpointing": False,
            "pad_to_multiple_of": pad_multiple,  # None: 16 under bf16, 1 in fp32
            "attn_implementation": attn,  # None: transformers' default (SDPA), as on the TRL side
        },
        "data": {"max_prompt_tokens": 512, "max_summary_tokens": 53},
        "peft": peft,
    }


def sft_config(a, art: Path, prepared: Path) -> dict:
    cfg = base_config(a.name, art, a.lora, a.bf16, a.pad_multiple, a.attn)
    cfg["data"] |= {"sft_source": str(art / "data" / "sft.jsonl"), "limit_train": 512, "limit_eval": 16}
    cfg["sft"] = {
        "epochs": 1.0,
        "batch_size": 8,
        "micro_batch_size": 8,
        "lr": 5e-4 if a.lora else 1e-4,
        "schedule": "linear",  # TRL's default schedule, no warmup
        "warmup_ratio": 0.0,
        "n_eval_samples": 0,
    }
    return cfg


def reward_config(a, art: Path, prepared: Path) -> dict:
    cfg = base_config(a.name, art, a.lora, a.bf16, a.pad_multiple, a.attn)
    cfg["data"] |= {
        "comparisons_source": str(prepared / "data" / "prefs"),
        "sft_source": str(art / "data" / "sft.jsonl"),
        "limit_train": 512,
        "limit_eval": 32,
    }
    cfg["reward"] = {
        "epochs": 1.0,
        "batch_size": 8,
        "micro_batch_size": 8,
        "lr": 1e-4,
        "schedule": "linear",
        "warmup_ratio": 0.0,
        "n_normalise": 16,
    }
    return cfg


def ppo_config(a, art: Path, prepared: Path) -> dict:
    cfg = base_config(a.name, art, a.lora, a.bf16, a.pad_multiple, a.attn)
    cfg["data"] |= {"sft_source": str(prepared / "data" / "ppo_prompts.jsonl"), "limit_train": a.episodes}
    cfg["ppo"] = {
        "total_episodes": a.episodes,
        "rollout_batch_size": 16,
        "num_minibatches": 1,
        "micro_batch_size": a.micro_batch,  # 16 = TRL's per-device batch and local_rollout_forward_batch_size
        "ppo_epochs": a.ppo_epochs,
        "lr": 3e-6,
        "schedule": "linear",
        "temperature": 1.0,
        "response_length": 48,
        "missing_eos_score": -1.0,
        "kl_coef": 0.05,
        "sample_every": 10_000,
        "share_base": True,
    }
    return cfg


def fresh_run_dir(a, prepared: Path) -> Path:
    """A clean run folder holding what the stage reads (`sft/model`, and for PPO `reward/model`)."""
    run = harness.WORK / "runs" / a.name
    shutil.rmtree(run, ignore_errors=True)
    src = prepared / ("lora" if a.lora else "full")
    if a.stage in ("reward", "ppo"):
        shutil.copytree(src / "sft", run / "sft")
    if a.stage == "ppo":
        shutil.copytree(src / "reward", run / "reward")
    return run


class Batches:
    """Counts rows / real / padded tokens of every batch a collate function builds inside the loop."""

    def __init__(self, clock: harness.LoopClock):
        self.clock, self.rows = clock, []

    def wrap(self, collate):
        def counted(*args, **kwargs):
            import torch

            batch = collate(*args, **kwargs)
            if self.clock.running and batch is not None:
                ids, mask = batch["input_ids"], batch["attention_mask"]
                labels = batch.get("labels")
                loss = int((labels != -100).sum()) if labels is not None else None
                if "completion_ids" in batch:  # distinct prompts and summaries run once; count the 2B
                    # sequences of the comparisons' real tokens as if each were scored in full
                    rows = torch.cat([batch["chosen"], batch["rejected"]])
                    full = batch["completion_mask"].sum(1) + mask.sum(1)[batch["completion_prompt"]]
                    padded = int(ids.numel() + batch["completion_ids"].numel())
                    self.rows.append((len(rows), int(full[rows].sum()), padded, loss))
                else:
                    self.rows.append((int(ids.shape[0]), int(mask.sum()), int(ids.numel()), loss))
            return batch

        return counted

    def totals(self) -> tuple[int, int, int, int]:
        return tuple(sum(r[i] or 0 for r in self.rows) for i in range(4))


def head_weights(prepared: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(prepared / "heads.safetensors"))


# ---------------------------------------------------------------- stages


def run_sft(a, common, clock, art, prepared) -> dict:
    import prefopt.sft.train as stage
    from prefopt.config import build_config

    clock.install(stage)
    batches = Batches(clock)
    stage.collate_sft = batches.wrap(stage.collate_sft)
    stage.train(build_config(sft_config(a, art, prepared)))
    rows, real, padded, loss_tok = batches.totals()
    res = dict(
        n_examples=512,
        batch=8,
        lora=a.lora,
        samples=rows,
        real_tokens=real,
        padded_tokens=padded,
        loss_tokens=loss_tok,
        wall_s=round(clock.wall, 3),
        samples_per_s=round(rows / clock.wall, 2),
        tokens_per_s=round(real / clock.wall, 1),
        padded_tokens_per_s=round(padded / clock.wall, 1),
        gradient_checkpointing=False,
    )
    return res | steady(clock, batches, "samples", 1)


def run_reward(a, common, clock, art, prepared) -> dict:
    import torch

    import prefopt.reward.train as stage
    from prefopt.config import build_config

    clock.install(stage)
    batches = Batches(clock)
    stage.collate_grouped = batches.wrap(stage.collate_grouped)
    heads, build = head_weights(prepared), stage.build_reward_model

    def build_with_harness_head(*args, **kwargs):
        model, wrapper = build(*args, **kwargs)
        with torch.no_grad():  # the harness's seeded score head (seed 4321), no bias
            model.head.weight.copy_(heads["reward"])
            model.head.bias.zero_()
        return model, wrapper

    stage.build_reward_model = build_with_harness_head
    run = stage.train(build_config(reward_config(a, art, prepared)))
    rows, real, padded, _ = batches.totals()
    done = read_done(run)
    res = dict(
        n_pairs=512,
        batch_pairs=8,
        lora=a.lora,
        pairs=rows // 2,
        sequences=rows,
        real_tokens=real,
        padded_tokens=padded,
        wall_s=round(clock.wall, 3),
        pairs_per_s=round(rows / 2 / clock.wall, 2),
        tokens_per_s=round(real / clock.wall, 1),
        padded_tokens_per_s=round(padded / clock.wall, 1),
        gradient_checkpointing=False,
        heldout_accuracy=done.get("eval/accuracy"),
    )
    return res | steady(clock, batches, "pairs", 2)


def steady(clock, batches: Batches, unit: str, rows_per_unit: int) -> dict:
    """Rates without the first optimizer step, as the harness's `steady_*` fields."""
    if len(clock.step_ends) < 2:
        return {}
    span = clock.step_ends[-1] - clock.step_ends[0]
    first = batches.rows[0]
    rows, real = batches.totals()[:2]
    return {
        f"steady_{unit}_per_s": round((rows - first[0]) / rows_per_unit / span, 2),
        "steady_tokens_per_s": round((real - first[1]) / span, 1),
    }


class Generation:
    """Counts what the rollouts generate (the harness's GenerateCounter, for prefopt's sampler)."""

    def __init__(self, clock: harness.LoopClock):
        self.clock = clock
        self.calls = self.sequences = self.valid = self.positions = 0
        self.seconds, self.scores = 0.0, []

    def wrap_sampler(self, sample_batch):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = sample_batch(*args, **kwargs)
            if self.clock.running:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
            return out

        return timed

    def wrap_collect(self, collect):
        def counted(*args, **kwargs):
            ro = collect(*args, **kwargs)
            if self.clock.running:
                self.sequences += len(ro)
                self.valid += int(ro.response_mask.sum())  # up to and including the first EOS
                self.positions += ro.responses.numel()
                self.scores.append(float(ro.scores.mean()))
            return ro

        return counted


def run_ppo(a, common, clock, art, prepared) -> dict:
    import torch

    import prefopt.ppo.rollout as rollout
    import prefopt.ppo.train as stage
    from prefopt.config import build_config

    clock.install(stage)
    gen = Generation(clock)
    rollout.sample_batch = gen.wrap_sampler(rollout.sample_batch)
    stage.collect = gen.wrap_collect(stage.collect)
    heads, build, built = head_weights(prepared), stage.build_roles, {}

    def build_with_harness_value_head(*args, **kwargs):
        roles = build(*args, **kwargs)
        with torch.no_grad():  # the harness's value head (seed 8765); prefopt would start it from the RM
            roles.value_head.weight.copy_(heads["value"])
            roles.value_head.bias.zero_()
        built["roles"] = roles
        return roles

    stage.build_roles = build_with_harness_value_head
    run = stage.train(build_config(ppo_config(a, art, prepared)))
    roles, wall = built["roles"], clock.wall
    res = dict(
        impl_ppo="prefopt.ppo.train ("
        + ("one shared base + LoRA adapters" if a.lora else "four full models")
        + ")",
        episodes=gen.sequences,
        updates=len(clock.step_ends),
        batch=16,
        micro_batch=a.micro_batch,
        num_ppo_epochs=a.ppo_epochs,
        num_mini_batches=1,
        response_length=48,
        lora=a.lora,
        gen_tokens=gen.valid,
        gen_positions=gen.positions,
        gen_calls=gen.calls,
        gen_s=round(gen.seconds, 3),
        wall_s=round(wall, 3),
        episodes_per_s=round(gen.sequences / wall, 3),
        gen_tokens_per_s=round(gen.valid / wall, 1),
        gen_positions_per_s=round(gen.positions / wall, 1),
        gen_only_tokens_per_s=round(gen.valid / max(gen.seconds, 1e-9), 1),
        gen_fraction=round(gen.seconds / wall, 3),
        models_in_memory=1 if a.lora else 4,
        trainable_params=sum(p.numel() for p in roles.trainable_parameters()),
        params_all_models=count_unique_params(roles),
        gradient_checkpointing_active=False,
        mean_score=round(sum(gen.scores) / max(1, len(gen.scores)), 4),
        prefopt_update_s_sum=round(sum(r.get("time/update_s", 0.0) for r in read_metrics(run)), 3),
    )
    return res


def count_unique_params(roles) -> int:
    tensors = {id(t): t for t in roles.base_tensors()}
    for head in (roles.value_head, roles.reward_head):
        tensors |= {id(p): p for p in head.parameters()}
    tensors |= {id(p): p for p in roles.trainable_parameters()}
    return sum(t.numel() for t in tensors.values())


def read_done(run: Path) -> dict:
    import json

    path = Path(run) / "DONE.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_metrics(run: Path) -> list[dict]:
    import json

    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("sft", "reward", "ppo"), required=True)
    ap.add_argument("--lora", action="store_true", help="LoRA r=16 alpha=32 on all linear layers")
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=128, help="PPO episodes (8 updates x 16 prompts)")
    ap.add_argument(
        "--micro-batch",
        type=int,
        default=16,
        help="PPO rows per forward/backward (16 = TRL's; 8 = accumulate 2)",
    )
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, as TRL's default bf16=True does")
    ap.add_argument(
        "--pad-multiple", type=int, default=None, help="model.pad_to_multiple_of (default: 16 in bf16)"
    )
    ap.add_argument("--attn", choices=("eager", "sdpa"), default=None, help="model.attn_implementation")
    a = ap.parse_args()
    a.name = (
        bench_name(a.stage, a.lora, a.ppo_epochs)
        + (f"_mb{a.micro_batch}" if a.micro_batch != 16 else "")
        + ("_bf16" if a.bf16 else "")
        + (f"_{a.attn}" if a.attn else "")
    )

    # the prepared folder is built in a child process: its memory never reaches this ru_maxrss
    prepared = Path(
        subprocess.check_output(
            [sys.executable, str(Path(__file__).with_name("prep.py"))], text=True
        ).split()[-1]
    )
    t_setup = time.perf_counter()
    common = harness.peer_common()
    common.quiet()
    art = common.workload.ensure_artifacts()
    common.set_seed(42)
    fresh_run_dir(a, prepared)
    clock = harness.LoopClock(common)
    runner = {"sft": run_sft, "reward": run_reward, "ppo": run_ppo}[a.stage]
    res = runner(a, common, clock, art, prepared)
    setup_s = clock.t_probe - t_setup  # everything before the loop and its calibration probe
    keys = {"sft": SFT_KEYS, "reward": REWARD_KEYS, "ppo": PPO_KEYS}[a.stage]
    harness.finish(common, a.name, res, clock, setup_s, keys)


if __name__ == "__main__":
    main()
