"""Reward model: learn r(post, summary) from human comparisons with the Bradley-Terry loss.

1. trunk = the SFT policy merged into its base, + a scalar head (LoRA through peft, or full fine-tuning)
2. comparisons: tokenised once, ordered by a length-grouped shuffle that is the same on every rank
3. AdamW (head at its own learning-rate scale) + warmup/decay schedule; resume from the latest checkpoint
4. the loop: chosen and rejected scored in ONE forward pass, loss -log sigmoid(r_c - r_r), accumulation
5. normalise: a bias so the SFT reference summaries score 0 on average
6. evaluate on held-out comparisons -> eval.json + reliability.png
7. save the reward model (the form PPO loads)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from prefopt.batching import (
    TokenizedPair,
    collate_grouped,
    collate_sft,
    completion_ids,
    prompt_ids,
    tokenize_comparisons,
)
from prefopt.config import Config, derive
from prefopt.data import tldr
from prefopt.data.load import load_comparisons, load_sft
from prefopt.data.types import Comparison, Post
from prefopt.models.heads import last_real_index
from prefopt.models.load import load_tokenizer, set_attention
from prefopt.optim import make_scheduler
from prefopt.reward.evaluate import (
    RELIABILITY_PNG,
    evaluate_scores,
    fact_check,
    flat_metrics,
    reliability_plot,
)
from prefopt.reward.model import build_reward_model, save_reward_model
from prefopt.runs import atomic_write_json, stage_dir
from prefopt.stage import open_stage
from prefopt.tracking import Tracker, progress
from prefopt.trainstate import local_microbatches, resume, save_ckpt

EVAL_FILE = "eval.json"
FACT_CHECK_POSTS = 100  # x 5 slots: 500 fact-swap pairs (600 sequences) in the testbed evaluation


def train(cfg: Config, accelerator=None) -> Path:
    """Run (or resume) the reward stage; returns `<run>/reward`."""
    with open_stage(cfg, "reward", accelerator) as st:
        acc, d = st.accelerator, derive(cfg, st.accelerator.num_processes, st.accelerator.mixed_precision)
        mult = d.pad_multiple  # few distinct batch widths (model.pad_to_multiple_of)

        # 1. the SFT policy, merged, + a scalar head
        sft_dir = stage_dir(cfg.run_dir, "sft") / "model"
        tok = load_tokenizer(str(sft_dir), eos_token=cfg.model.eos_token)
        model, peft_wrapper = build_reward_model(
            sft_dir, tok, cfg.peft, dtype=cfg.model.dtype, device=str(acc.device)
        )
        set_attention(model, cfg.model.attn_implementation)
        if cfg.model.gradient_checkpointing:
            model.trunk.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        # 2. data
        train_c, valid_c = load_comparison_splits(cfg)
        budget = (cfg.data.max_prompt_tokens, cfg.data.max_summary_tokens)
        train_set = tokenize_comparisons(train_c, tok, *budget)
        valid_set = tokenize_comparisons(valid_c, tok, *budget)
        lengths = tuple(max(c.length, r.length) for c, r in train_set)  # a pair's row width in the batch
        groups = post_groups(train_set)  # a post's comparisons share a batch: its prompt is encoded once
        total_steps = max(1, int(cfg.reward.epochs * len(train_set)) // cfg.reward.batch_size)
        st.print(f"{len(train_set)} train / {len(valid_set)} held-out comparisons, {total_steps} steps")

        # 3. optimizer, schedule, resume
        opt = make_reward_optimizer(model, cfg)
        sched = make_scheduler(opt, cfg.reward.schedule, cfg.reward.warmup_ratio, total_steps)
        model, opt = acc.prepare(model, opt)
        start = resume(st, acc.unwrap_model(model), opt, sched)

        # 4. the loop: step s always sees the same pairs, so a resumed run repeats an uninterrupted one
        tracker = Tracker(st.dir, enabled=st.is_main, resume_step=start if start else None)
        t0, bar = time.time(), progress(total=total_steps, desc="reward", enabled=st.is_main)
        bar.update(start)
        model.train()
        window = torch.zeros(4, device=acc.device)  # loss sum, correct, margin sum, pairs since last log
        step = start
        for step in range(start, total_steps):
            batches = local_microbatches(
                train_set,
                lengths,
                step,
                batch_size=cfg.reward.batch_size,
                micro=cfg.reward.micro_batch_size,
                accum=d.reward_grad_accum,
                seed=cfg.seed,
                acc=acc,
                groups=groups,
            )
            n_local = sum(len(mb) for mb in batches)
            for i, mb in enumerate(batches):
                batch = collate_grouped(mb, tok.pad_token_id, mult)
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                ctx = contextlib.nullcontext() if i == len(batches) - 1 else acc.no_sync(model)
                with ctx:
                    r_c, r_r = pair_rewards(model, batch)
                    losses = bradley_terry_loss(r_c, r_r)  # [B]
                    acc.backward(losses.sum() / n_local)
                window += pair_stats(losses, r_c, r_r)
            grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.reward.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            if (step + 1) % cfg.reward.log_every == 0 or step + 1 == total_steps:
                w = acc.reduce(window, reduction="sum").tolist()
                logged = {
                    "train/loss": w[0] / w[3],
                    "train/accuracy": w[1] / w[3],
                    "train/margin": w[2] / w[3],
                }
                logged |= {"train/grad_norm": float(grad_norm), "train/lr": sched.get_last_lr()[0]}
                tracker.log(step + 1, logged)
                bar.set_postfix(loss=f"{logged['train/loss']:.3f}", acc=f"{logged['train/accuracy']:.2f}")
                window.zero_()
            if cfg.reward.save_every and (step + 1) % cfg.reward.save_every == 0 and step + 1 < total_steps:
                save_ckpt(st, acc.unwrap_model(model), opt, sched, step + 1, cfg.reward.keep_last)
            if cfg.reward.max_seconds and time.time() - t0 > cfg.reward.max_seconds:
                st.print(
                    f"time budget reward.max_seconds={cfg.reward.max_seconds} reached at step {step + 1}/{total_steps}"
                )
                break
        bar.close()
        steps_done = step + 1 if total_steps > start else start
        rm = acc.unwrap_model(model)
        rm.eval()

        # 5. normalise: reference summaries of the SFT training data score 0 on average
        refs = load_sft(
            cfg.data.sft_source, cfg.data.train_split, **_data_kw(cfg, "sft", cfg.reward.n_normalise)
        )
        ref_set = tokenize_summaries([r.post for r in refs], [r.summary for r in refs], tok, *budget)
        bias = set_reference_bias(rm, ref_set, tok.pad_token_id, cfg.reward.micro_batch_size, acc, mult)
        st.print(f"bias {bias:+.4f}: mean reward of {len(ref_set)} reference summaries is now 0")

        # 6. evaluate on held-out comparisons
        metrics = {"normalise/bias": bias}
        if valid_set:
            r_c, r_r = score_pairs(rm, valid_set, tok.pad_token_id, cfg.reward.micro_batch_size, acc, mult)
            lens = (
                [len(c.completion) - 1 for c, _ in valid_set],
                [len(r.completion) - 1 for _, r in valid_set],
            )
            report = evaluate_scores(r_c, r_r, valid_c, *lens, n_bins=cfg.reward.calibration_bins)
            if "testbed" in report:
                split = cfg.data.eval_split
                report["testbed"]["fact_check"] = fact_check_scores(
                    rm, tok, split, budget, cfg.seed, acc, mult
                )
            report |= {"bias": bias, "n_normalise": len(ref_set), "steps": steps_done}
            metrics |= flat_metrics(report)
            if st.is_main:
                atomic_write_json(st.dir / EVAL_FILE, _json_safe(report))
                reliability_plot(report["calibration"], st.dir / RELIABILITY_PNG)
        else:
            st.print("no held-out comparisons: evaluation skipped")
        tracker.log(steps_done, metrics)
        tracker.close()
        st.print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "/length/" not in k))

        # 7. save
        if st.is_main:
            save_reward_model(
                rm,
                st.model_dir,
                peft_wrapper=peft_wrapper,
                base=sft_dir,
                tokenizer=tok,
                extra={"max_prompt_tokens": budget[0], "max_summary_tokens": budget[1]},
            )
        st.finish(_json_safe({"steps": steps_done, "seconds": time.time() - t0, **metrics}))
    return st.dir


# ---------------------------------------------------------------- the math


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """[B], [B] -> [B]: -log sigmoid(r_chosen - r_rejected), the Bradley-Terry negative log-likelihood
    of the labeler's choice (logsigmoid is stable for large margins of either sign)."""
    return -F.logsigmoid(r_chosen.float() - r_rejected.float())


def pair_rewards(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen [B], r_rejected [B]), each read at its summary's last real token (its EOS).

    A `collate_grouped` batch runs each distinct prompt once and each distinct summary once on its
    prompt's cache; a `collate_pairs` batch (chosen rows, then rejected rows: [2B, T]) runs every
    sequence in full. Both give the same rewards; both score everything in ONE call.

    Goes through `model(...)` (not `.score`) so a DDP-wrapped model syncs its gradients."""
    if "completion_ids" not in batch:
        values = model(batch["input_ids"], batch["attention_mask"])  # [2B, T]
        return values.gather(1, last_real_index(batch["attention_mask"])[:, None]).squeeze(1).chunk(2)
    values = model(  # [N, S] over the distinct completions
        batch["input_ids"],
        batch["attention_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
        batch["completion_prompt"],
    )
    rewards = values.gather(1, last_real_index(batch["completion_mask"])[:, None]).squeeze(1)  # [N]
    return rewards[batch["chosen"]], rewards[batch["rejected"]]


def pair_stats(losses: torch.Tensor, r_c: torch.Tensor, r_r: torch.Tensor) -> torch.Tensor:
    """[4]: summed loss, correct pairs (ties one half), summed margin, pair count (no gradient)."""
    with torch.no_grad():
        hits = (r_c > r_r).float() + 0.5 * (r_c == r_r).float()
        count = torch.full((), float(len(losses)), device=losses.device)
        return torch.stack([losses.sum(), hits.sum(), (r_c - r_r).float().sum(), count])


def make_reward_optimizer(model, cfg: Config) -> torch.optim.AdamW:
    """AdamW over the trainable tensors; the scalar head gets `reward.head_only_lr_scale` x the rate."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    trunk = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": trunk, "lr": cfg.reward.lr}] if trunk else []
    groups.append({"params": head, "lr": cfg.reward.lr * cfg.reward.head_only_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.reward.lr, weight_decay=cfg.reward.weight_decay)


# ---------------------------------------------------------------- scoring, normalisation


def tokenize_summaries(
    posts: Sequence[Post], summaries: Sequence[str], tok, max_prompt_tokens: int, max_summary_tokens: int
) -> list[TokenizedPair]:
    """(post, summary) -> prompt + `" " + summary + EOS`, cut like the comparisons are (ends in EOS)."""
    out = []
    for post, summary in zip(posts, summaries, strict=True):
        ids = completion_ids(" " + summary, tok)
        if len(ids) > max_summary_tokens:
            ids = ids[: max_summary_tokens - 1] + [tok.eos_token_id]
        out.append(TokenizedPair(prompt_ids(post, tok, max_prompt_tokens), ids))
    return out


def over_ranks(n: int, micro: int, acc, score_chunk) -> list:
    """`score_chunk(range)` -> one result per index, over indices 0..n-1 in chunks of `micro`; with
    `acc`, the chunks are dealt to the ranks in turn and every rank gets all results, in index order."""
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    out: list[tuple[int, object]] = []
    for start in range(rank * micro, n, world * micro):
        idx = range(start, min(start + micro, n))
        out += zip(idx, score_chunk(idx), strict=True)
    if world > 1:
        from accelerate.utils import gather_object

        out = gather_object(out)
    return [r for _, r in sorted(out, key=lambda t: t[0])]


@torch.no_grad()
def score_sequences(
    model, seqs: Sequence[TokenizedPair], pad_id: int, micro: int, acc=None, multiple: int = 1
) -> list[float]:
    """Normalised rewards (bias subtracted) of `seqs`, in order. With `acc`, ranks share the work."""
    device = next(model.parameters()).device

    def score(idx: range) -> list[float]:
        batch = collate_sft([seqs[j] for j in idx], pad_id, multiple)
        return model.score(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().tolist()

    return over_ranks(len(seqs), micro, acc, score)


@torch.no_grad()
def score_pairs(
    model, pairs, pad_id: int, micro: int, acc=None, multiple: int = 1
) -> tuple[list[float], list[float]]:
    """Normalised rewards of the chosen and of the rejected summaries of tokenised comparisons, in
    order. Consecutive comparisons of one post share its prompt's encoding (`collate_grouped`)."""
    device, bias = next(model.parameters()).device, float(model.bias)

    def score(idx: range) -> list[tuple[float, float]]:
        batch = collate_grouped([pairs[j] for j in idx], pad_id, multiple)
        r_c, r_r = pair_rewards(model, {k: v.to(device) for k, v in batch.items()})
        return list(zip((r_c - bias).tolist(), (r_r - bias).tolist(), strict=True))

    scored = over_ranks(len(pairs), micro, acc, score)
    return [c for c, _ in scored], [r for _, r in scored]


def fact_check_scores(
    model,
    tok,
    split: str,
    budget: tuple[int, int],
    seed: int,
    acc=None,
    multiple: int = 1,
    n_posts: int = FACT_CHECK_POSTS,
) -> dict[str, float]:
    """The testbed's fact swaps of `n_posts` posts of `split`, scored by the reward model: per slot, how
    often the faithful summary outscores its twin with that one fact swapped (0.5 = not checked)."""
    from prefopt.data.testbed import fact_swaps

    def score(seqs: list[TokenizedPair]) -> list[float]:
        return score_sequences(model, seqs, tok.pad_token_id, 32, acc, multiple)

    return score_fact_swaps(fact_swaps(split, n_posts, seed), tok, budget, score)


def score_fact_swaps(swaps, tok, budget: tuple[int, int], score) -> dict[str, float]:
    """`fact_check` of `swaps` under `score` (tokenised sequences -> one number each, higher = better).
    A post's swaps share its faithful summary, so that one is tokenised and scored once."""
    from prefopt.data.testbed_writers import FACT_SLOTS

    k = len(FACT_SLOTS)  # `fact_swaps` gives each post's k swaps in a row
    firsts = swaps[::k]
    r_faithful = score(
        tokenize_summaries([s.post for s in firsts], [s.faithful for s in firsts], tok, *budget)
    )
    r_swapped = score(tokenize_summaries([s.post for s in swaps], [s.swapped for s in swaps], tok, *budget))
    return fact_check([r for r in r_faithful for _ in range(k)], r_swapped, [s.slot for s in swaps])


def set_reference_bias(
    model, refs: Sequence[TokenizedPair], pad_id: int, micro: int, acc=None, multiple: int = 1
) -> float:
    """Set the model's bias to the mean raw reward of `refs`, so they average 0 afterwards; return it."""
    model.set_bias(0.0)
    raw = score_sequences(model, refs, pad_id, micro, acc, multiple)
    bias = sum(raw) / len(raw)
    model.set_bias(bias)
    return float(model.bias)


# ---------------------------------------------------------------- data


def load_comparison_splits(cfg: Config) -> tuple[list[Comparison], list[Comparison]]:
    """Training and held-out comparisons. A single file has no splits: a seeded `reward.eval_fraction`
    of its POSTS is held out (so no post is both trained on and evaluated)."""
    source = cfg.data.comparisons_source
    if Path(source).expanduser().is_file():
        rows = load_comparisons(source, **_data_kw(cfg, "comparison", None))
        train, valid = split_by_post(rows, cfg.reward.eval_fraction, cfg.seed)
        return train[: cfg.data.limit_train], valid[: cfg.data.limit_eval]
    train = load_comparisons(
        source, cfg.data.train_split, **_data_kw(cfg, "comparison", cfg.data.limit_train)
    )
    valid = load_comparisons(source, cfg.data.eval_split, **_data_kw(cfg, "comparison", cfg.data.limit_eval))
    return train, valid


def post_groups(pairs: Sequence[tuple[TokenizedPair, TokenizedPair]]) -> tuple[int, ...]:
    """A group id per comparison: comparisons of the same prompt share one."""
    ids: dict[tuple[int, ...], int] = {}
    return tuple(ids.setdefault(tuple(c.prompt), len(ids)) for c, _ in pairs)


def split_by_post(rows: Sequence[Comparison], fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split by a hash of (seed, post): the same post always lands on the same side."""

    def held_out(c: Comparison) -> bool:
        key = f"{seed}:{c.post.id or c.post.prompt}".encode()
        return int(hashlib.sha256(key).hexdigest()[:8], 16) / 16**8 < fraction

    train, valid = [], []
    for c in rows:
        (valid if held_out(c) else train).append(c)
    return train, valid


def _data_kw(cfg: Config, kind: str, limit: int | None) -> dict:
    """Loader arguments; `data.layout` applies only to the kind it names, fill_missing to comparisons."""
    layout = cfg.data.layout if cfg.data.layout in tldr.LAYOUTS[kind] else None
    kw = {"layout": layout, "on_bad_row": cfg.data.on_bad_row, "limit": limit, "seed": cfg.seed}
    if kind == "comparison":
        kw["summaries_per_post"] = cfg.data.testbed_summaries_per_post
        if cfg.reward.fill_missing:
            kw["fill_missing"] = dict(cfg.reward.fill_missing)
    return kw


def _json_safe(obj):
    """NaN -> None, so eval.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------- CLI: prefopt reward score MODEL FILE


def score_file(
    model_dir: Path, file: Path, out: Path | None = None, *, micro: int = 16, device: str | None = None
) -> list[float]:
    """Score every (post, summary) row of an SFT-layout file with a saved reward model; print one line
    per row (reward, then the start of the summary) and, with `out`, write them as JSON lines."""
    from prefopt.models.adapters import read_meta
    from prefopt.reward.model import load_reward_model, reward_model_dir

    model_dir = reward_model_dir(Path(model_dir))
    meta = read_meta(model_dir)
    tok = load_tokenizer(str(model_dir))
    model = load_reward_model(model_dir, tok, device=device)
    examples = load_sft(str(file))
    seqs = tokenize_summaries(
        [e.post for e in examples],
        [e.summary for e in examples],
        tok,
        meta.get("max_prompt_tokens", 512),
        meta.get("max_summary_tokens", 53),
    )
    scores = score_sequences(model, seqs, tok.pad_token_id, micro)
    for s, e in zip(scores, examples, strict=True):
        print(f"{s:+.4f}\t{e.summary[:70]!r}")
    if out is not None:
        rows = [
            {"prompt": e.prompt, "summary": e.summary, "reward": s}
            for e, s in zip(examples, scores, strict=True)
        ]
        Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return scores
