"""Supervised fine-tuning: teach the base model to write `" " + summary + EOS` after the TL;DR prompt.

1. base model + tokenizer (+ the PEFT method)
2. tokenised, length-grouped data
3. AdamW + warmup/decay schedule; resume from the latest checkpoint
4. the loop: loss on completion tokens only, gradient accumulation, clipping
5. evaluation: validation loss, greedy samples -> ROUGE (+ gold score on the testbed)
6. save_pretrained (adapter or full weights)
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from prefopt.batching import IGNORE, collate_sft, prompt_ids, tokenize_sft
from prefopt.config import Config, derive
from prefopt.data.load import load_sft
from prefopt.models.adapters import apply_peft, save_policy
from prefopt.models.base import resolve_base, tokenizer_source
from prefopt.models.load import load_causal_lm, load_tokenizer, set_attention
from prefopt.optim import make_optimizer, make_scheduler
from prefopt.stage import Stage, open_stage
from prefopt.tracking import Tracker, progress
from prefopt.trainstate import local_microbatches, resume, save_ckpt

FACT_WARN = 0.8  # per-fact accuracy of SFT samples below which the stage warns (testbed only)


def train(cfg: Config, accelerator=None) -> Path:
    """Run (or resume) the SFT stage; returns `<run>/sft`."""
    with open_stage(cfg, "sft", accelerator) as st:
        acc, d = st.accelerator, derive(cfg, st.accelerator.num_processes, st.accelerator.mixed_precision)
        mult = d.pad_multiple  # few distinct batch widths (model.pad_to_multiple_of)

        # 1. base model + tokenizer + PEFT method
        base = resolve_base(cfg) if acc.is_main_process else None
        acc.wait_for_everyone()
        base = base or resolve_base(cfg)
        tok = load_tokenizer(tokenizer_source(cfg, base), eos_token=cfg.model.eos_token)
        model = load_causal_lm(base, tok, dtype=cfg.model.dtype, device=str(acc.device))
        set_attention(model, cfg.model.attn_implementation)  # before peft: prefix tuning sets its own
        model = apply_peft(model, cfg.peft)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()

        # 2. data: tokenised once, ordered by a length-grouped shuffle that is the same on every rank
        train_ex = load_sft(cfg.data.sft_source, cfg.data.train_split, **_data_kw(cfg, cfg.data.limit_train))
        valid_ex = load_sft(cfg.data.sft_source, cfg.data.eval_split, **_data_kw(cfg, cfg.data.limit_eval))
        train_set = tokenize_sft(train_ex, tok, cfg.data.max_prompt_tokens, cfg.data.max_summary_tokens)
        valid_set = tokenize_sft(valid_ex, tok, cfg.data.max_prompt_tokens, cfg.data.max_summary_tokens)
        total_steps = max(1, int(cfg.sft.epochs * len(train_set)) // cfg.sft.batch_size)
        st.print(
            f"{len(train_set)} train / {len(valid_set)} valid examples, {total_steps} steps, base={base}"
        )

        # 3. optimizer, schedule, resume
        opt = make_optimizer(model.parameters(), cfg.sft.lr, cfg.sft.weight_decay)
        sched = make_scheduler(opt, cfg.sft.schedule, cfg.sft.warmup_ratio, total_steps)
        model, opt = acc.prepare(model, opt)
        start = resume(st, acc.unwrap_model(model), opt, sched)

        # 4. the loop: step s always sees the same examples, so a resumed run repeats an uninterrupted one
        tracker = Tracker(st.dir, enabled=st.is_main, resume_step=start if start else None)
        micro = cfg.sft.micro_batch_size
        lengths = tuple(p.length for p in train_set)
        t0, bar = time.time(), progress(total=total_steps, desc="sft", enabled=st.is_main)
        bar.update(start)
        model.train()
        step = start
        for step in range(start, total_steps):
            batches = local_microbatches(
                train_set,
                lengths,
                step,
                batch_size=cfg.sft.batch_size,
                micro=micro,
                accum=d.sft_grad_accum,
                seed=cfg.seed,
                acc=acc,
            )
            n_tokens = sum(sum(len(p.completion) for p in mb) for mb in batches)
            loss_sum = 0.0
            for i, mb in enumerate(batches):
                batch = {k: v.to(acc.device) for k, v in collate_sft(mb, tok.pad_token_id, mult).items()}
                sync = i == len(batches) - 1
                ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
                with ctx:
                    loss = completion_nll(model, batch) / n_tokens
                    acc.backward(loss)
                loss_sum += loss.item()
            grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.sft.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            if (step + 1) % cfg.sft.log_every == 0 or step + 1 == total_steps:
                lr = sched.get_last_lr()[0]
                tracker.log(
                    step + 1, {"train/loss": loss_sum, "train/grad_norm": float(grad_norm), "train/lr": lr}
                )
                bar.set_postfix(loss=f"{loss_sum:.3f}")
            if cfg.sft.eval_every and (step + 1) % cfg.sft.eval_every == 0:
                tracker.log(
                    step + 1, {"valid/loss": validation_loss(model, valid_set, tok, micro, acc, mult)}
                )
            if cfg.sft.save_every and (step + 1) % cfg.sft.save_every == 0 and step + 1 < total_steps:
                _save_ckpt(st, acc.unwrap_model(model), opt, sched, step + 1)
            if cfg.sft.max_seconds and time.time() - t0 > cfg.sft.max_seconds:
                st.print(
                    f"time budget sft.max_seconds={cfg.sft.max_seconds} reached at step {step + 1}/{total_steps}"
                )
                break
        bar.close()
        steps_done = step + 1 if total_steps > start else start

        # 5. evaluation
        metrics = {"valid/loss": validation_loss(model, valid_set, tok, micro, acc, mult)}
        if st.is_main:
            metrics |= sample_and_score(
                acc.unwrap_model(model), tok, valid_ex[: cfg.sft.n_eval_samples], cfg, st.dir
            )
        tracker.log(steps_done, metrics)
        tracker.close()
        st.print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        # 6. save
        if st.is_main:
            save_policy(acc.unwrap_model(model), st.model_dir, cfg.peft, base, tok)
        st.finish({"steps": steps_done, "seconds": time.time() - t0, **metrics})
    return st.dir


def completion_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over completion tokens. Logits are computed only from the first position
    that predicts a completion token onward (`logits_to_keep`): with a 151k vocabulary the prompt's
    logits would be most of the memory."""
    labels = batch["labels"]
    seq_len = labels.shape[1]
    first = int((labels != IGNORE).float().argmax(dim=1).min()) - 1  # position predicting the first label
    keep = seq_len - max(first, 0)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits  # [B, keep, V]
    targets = labels[:, seq_len - keep + 1 :]  # token t+1 is predicted at position t
    logits = logits[:, :-1] if keep > 1 else logits[:, :0]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


@torch.no_grad()
def validation_loss(model, pairs, tok, micro: int, acc, multiple: int = 1) -> float:
    """Per-token NLL of the reference completions (averaged over all ranks' tokens)."""
    model.eval()
    local = pairs[acc.process_index :: acc.num_processes]
    total = torch.zeros(2, device=acc.device)
    for i in range(0, len(local), micro):
        batch = {
            k: v.to(acc.device)
            for k, v in collate_sft(local[i : i + micro], tok.pad_token_id, multiple).items()
        }
        total[0] += completion_nll(model, batch)
        total[1] += (batch["labels"] != IGNORE).sum()
    total = acc.reduce(total, reduction="sum")
    model.train()
    return float(total[0] / total[1].clamp(min=1))


@torch.no_grad()
def sample_and_score(model, tok, examples, cfg: Config, out_dir: Path) -> dict[str, float]:
    """Greedy summaries of held-out posts: ROUGE against references, gold score on the testbed."""
    from prefopt.eval.text_metrics import gold_scores, is_testbed, rouge, win_rate
    from prefopt.generate import decode_responses, sample

    if not examples:
        return {}
    model.eval()
    prompts = [prompt_ids(ex.post, tok, cfg.data.max_prompt_tokens) for ex in examples]
    raw = sample(
        model,
        prompts,
        max_new_tokens=cfg.data.max_summary_tokens,
        temperature=0.0,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
    )
    texts = decode_responses(tok, raw)
    refs = [ex.summary for ex in examples]
    metrics = {f"samples/{k}": v for k, v in rouge(texts, refs).items()}
    metrics["samples/eos_rate"] = sum(tok.eos_token_id in r for r in raw) / len(raw)
    rows = [
        {"prompt": ex.prompt, "reference": ex.summary, "sample": t}
        for ex, t in zip(examples, texts, strict=True)
    ]
    if is_testbed([ex.post for ex in examples]):
        posts = [ex.post for ex in examples]
        g_s, g_r = gold_scores(posts, texts), gold_scores(posts, refs)
        metrics |= {
            "samples/gold": sum(g_s) / len(g_s),
            "samples/gold_reference": sum(g_r) / len(g_r),
            "samples/gold_win_rate_vs_reference": win_rate(g_s, g_r),
        }
        metrics |= fact_accuracy(posts, texts)
        for row, a, b in zip(rows, g_s, g_r, strict=True):
            row |= {"gold_sample": a, "gold_reference": b}
        facts = {k[13:]: v for k, v in metrics.items() if k.startswith("samples/fact_")}
        weak = {k: v for k, v in facts.items() if v < FACT_WARN and k != "question"}
        if weak:  # the question is left out by most references: adding it is RLHF's job, not SFT's
            warnings.warn(
                f"SFT samples get facts of the post wrong ({', '.join(f'{k}={v:.2f}' for k, v in weak.items())}; "
                f"gold {metrics['samples/gold']:.2f} vs references {metrics['samples/gold_reference']:.2f}). "
                "A reward model built on this trunk will reward the look of a summary; train SFT longer.",
                stacklevel=2,
            )
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    model.train()
    return metrics


def fact_accuracy(posts, texts) -> dict[str, float]:
    """Testbed: the share of samples that state each key fact correctly (who, event, feeling, question)."""
    from prefopt.data.testbed import gold_breakdown

    counts: dict[str, float] = {}
    for post, text in zip(posts, texts, strict=True):
        b = gold_breakdown(post, text)
        for fact, ok in b.covered.items():
            counts[fact] = counts.get(fact, 0.0) + float(ok and fact not in b.wrong_slots)
    return {f"samples/fact_{k}": v / max(1, len(posts)) for k, v in counts.items()}


# ---------------------------------------------------------------- plumbing


def _data_kw(cfg: Config, limit: int | None) -> dict:
    return {"layout": cfg.data.layout, "on_bad_row": cfg.data.on_bad_row, "limit": limit, "seed": cfg.seed}


def _save_ckpt(st: Stage, model, opt, sched, step: int) -> None:
    save_ckpt(st, model, opt, sched, step, st.cfg.sft.keep_last)
