"""PPO: improve the SFT policy against the reward model under a KL penalty to the SFT policy.

Each update:
    1. rollout: sample responses (temperature T, fixed budget), truncate after EOS
    2. score: old log-probs, reference log-probs, values, reward-model scores (no EOS -> fixed score)
    3. rewards: -beta * KL per token, the score added at the last real token
    4. advantages: GAE (gamma, lambda), whitened over real tokens
    5. optimise: several epochs of minibatches, clipped policy loss + vf_coef * clipped value loss
    6. adapt beta (optional), log, checkpoint
"""

from __future__ import annotations

import functools
import json
import random
import resource
import time
import warnings
from pathlib import Path

import torch

from prefopt.batching import collate_left, prompt_ids
from prefopt.config import Config, derive
from prefopt.data.load import load_sft
from prefopt.models.load import load_tokenizer
from prefopt.models.roles import build_roles
from prefopt.ops import masked_mean, masked_whiten
from prefopt.ppo import core
from prefopt.ppo.rollout import Rollout, collect, response_logprobs, response_values
from prefopt.stage import Stage, open_stage
from prefopt.tracking import Tracker, progress
from prefopt.trainstate import load_latest, save_state


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates with NaN/inf losses."""


def train(cfg: Config, accelerator=None) -> Path:
    """Run (or resume) the PPO stage; returns `<run>/ppo`."""
    with open_stage(cfg, "ppo", accelerator) as st:
        acc, d, pc = (
            st.accelerator,
            derive(cfg, st.accelerator.num_processes, st.accelerator.mixed_precision),
            cfg.ppo,
        )
        mult = d.pad_multiple  # few distinct batch widths (model.pad_to_multiple_of)
        sft_dir, rm_dir = cfg.run_dir / "sft" / "model", cfg.run_dir / "reward" / "model"
        tok = load_tokenizer(str(sft_dir), eos_token=cfg.model.eos_token)
        roles = build_roles(
            sft_dir,
            rm_dir,
            tok,
            share_base=pc.share_base,
            lora_cfg=cfg.peft,
            device=str(acc.device),
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            attn_implementation=cfg.model.attn_implementation,
        )
        params = roles.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=pc.lr, eps=1e-5)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda u: 1.0 - u / d.ppo_updates) if pc.schedule == "linear" else (lambda u: 1.0)
        )
        kl_ctl = (
            core.AdaptiveKLController(pc.kl_coef, pc.target_kl, pc.kl_horizon)
            if pc.adaptive_kl
            else core.FixedKLController(pc.kl_coef)
        )
        posts = _train_posts(cfg)
        prompts = [prompt_ids(post, tok, cfg.data.max_prompt_tokens) for post in posts]
        start = _resume(st, roles, opt, sched, kl_ctl)
        _broadcast_from_main(params, acc)  # fresh adapters are drawn from per-rank seeds: start from rank 0's
        st.print(
            f"{len(prompts)} prompts, {d.ppo_updates} updates x {pc.rollout_batch_size} episodes, "
            f"roles={'one shared base' if hasattr(roles, 'model') else 'four models'}"
        )
        tracker = Tracker(st.dir, enabled=st.is_main, resume_step=start if start else None)
        bar = progress(total=d.ppo_updates, desc="ppo", enabled=st.is_main)
        bar.update(start)
        bad_in_row, t_start = 0, time.time()

        for update in range(start, d.ppo_updates):
            t0 = time.time()
            # 1-2. rollout and scores (this rank's share of the update's prompts)
            idx = _prompt_indices(len(prompts), update, pc.rollout_batch_size, cfg.seed)
            idx = idx[acc.process_index * d.ppo_local_rollout : (acc.process_index + 1) * d.ppo_local_rollout]
            q = {
                k: v.to(acc.device)
                for k, v in collate_left([prompts[i] for i in idx], tok.pad_token_id, mult).items()
            }
            with acc.autocast():  # the configured mixed precision (prepare() is not used for the roles)
                ro = collect(
                    roles,
                    q["input_ids"],
                    q["attention_mask"],
                    response_length=pc.response_length,
                    temperature=pc.temperature,
                    eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id,
                    missing_eos_score=pc.missing_eos_score,
                    forward_batch=pc.micro_batch_size,
                    generation_batch=pc.generation_batch_size,
                )
            t_rollout = time.time() - t0

            # 3. per-token rewards: -beta * KL everywhere, the score at the last real token
            mask = ro.response_mask
            rewards, kl = core.per_token_rewards(
                ro.scores, ro.logprobs, ro.ref_logprobs, mask, kl_ctl.value, pc.kl_estimator
            )
            if pc.whiten_rewards:
                rewards = core.whiten_rewards(rewards, mask)

            # 4. advantages (whitened over real tokens only) and returns
            advantages, returns = core.gae(rewards, ro.values, mask, pc.gamma, pc.lam)
            advantages = masked_whiten(advantages, mask)

            # 5. PPO epochs over minibatches (same shuffle on every rank)
            stats, bad = _optimise(roles, ro, advantages, returns, opt, params, pc, d, acc, update, cfg.seed)
            bad_in_row = bad_in_row + 1 if bad else 0
            if bad_in_row >= pc.max_bad_updates:
                raise TrainingDiverged(
                    f"{bad_in_row} consecutive PPO updates had NaN/inf losses; stopping. The last good "
                    f"checkpoint in {st.ckpt_dir} is intact. Lower ppo.lr or raise ppo.kl_coef."
                )
            sched.step()

            # 6. adapt beta, log, sample table, checkpoint
            seq_kl = (kl * mask).sum(1)
            kl_ctl.update(float(acc.gather(seq_kl).mean()), pc.rollout_batch_size)
            metrics = _rollout_metrics(ro, kl, returns, kl_ctl.value, tok, [posts[i] for i in idx]) | stats
            dt = time.time() - t0
            metrics |= {
                "time/rollout_s": t_rollout,
                "time/update_s": dt,
                "perf/episodes_per_s": len(ro) * acc.num_processes / dt,
                "perf/gen_tokens_per_s": float(mask.sum()) * acc.num_processes / t_rollout,
                "perf/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "objective/kl_coef": kl_ctl.value,
                "lr": sched.get_last_lr()[0],
            }
            tracker.log(update + 1, metrics)
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/score']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
            if st.is_main and (update % pc.sample_every == 0 or update + 1 == d.ppo_updates):
                _write_samples(st.dir, update + 1, ro, tok, posts, idx)
            if pc.save_every and (update + 1) % pc.save_every == 0 and update + 1 < d.ppo_updates:
                _save_ckpt(st, roles, opt, sched, kl_ctl, update + 1)
        bar.close()
        tracker.close()
        _check_replicas_agree(params, acc)
        if st.is_main:
            roles.save_policy(st.model_dir, sft_dir, tok)
        st.finish({"updates": d.ppo_updates, "seconds": time.time() - t_start})
    return st.dir


def _optimise(roles, ro: Rollout, advantages, returns, opt, params, pc, d, acc, update: int, seed: int):
    """ppo_epochs x num_minibatches optimizer steps; returns averaged stats and whether any step was bad."""
    sums: dict[str, float] = {}
    n, bad = 0, False
    gen = torch.Generator().manual_seed(seed * 100_003 + update)
    for epoch in range(pc.ppo_epochs):
        order = torch.randperm(len(ro), generator=gen).to(ro.queries.device)
        for mb_start in range(0, len(ro), d.ppo_minibatch):
            mb_idx = order[mb_start : mb_start + d.ppo_minibatch]
            step_stats, ok = _minibatch_step(roles, ro, advantages, returns, mb_idx, opt, params, pc, d, acc)
            bad |= not ok
            for k, v in step_stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if epoch == 0 and mb_start == 0:
                sums["first/ratio_mean"] = step_stats["policy/ratio_mean"]
                sums["first/approx_kl"] = step_stats["policy/approx_kl"]
        if pc.approx_kl_stop and sums["policy/approx_kl"] / n > pc.approx_kl_stop:
            break  # early stop: the policy already moved far from the rollout policy
    out = {k: v / n for k, v in sums.items() if not k.startswith("first/")}
    out |= {k: v for k, v in sums.items() if k.startswith("first/")}
    out["policy/epochs_run"] = epoch + 1
    return out, bad


def _minibatch_step(roles, ro, advantages, returns, mb_idx, opt, params, pc, d, acc):
    """One optimizer step over a minibatch, accumulated over micro-batches. Skipped if non-finite."""
    stats: dict[str, float] = {}
    ok = True
    # the gradient is a sum over micro-batches, so grouping prompts of similar length changes nothing
    # but the padding each micro-batch carries (the harness workload: 17% of positions were padding)
    mb_idx = mb_idx[torch.argsort(ro.query_mask[mb_idx].sum(1), stable=True)]
    for micro in mb_idx.split(pc.micro_batch_size):
        mb = ro.select(micro).without_pad_columns(d.pad_multiple)
        mask = mb.response_mask
        # policy and value share no trainable parameter, so (pg + vf_coef * vf).backward() equals two
        # backward passes; doing the policy's first frees its graph before the value forward (less memory)
        # autocast around the forwards only: its cache of cast weights lives until the context exits,
        # so a context spanning opt.step() would feed later forwards stale weights
        with acc.autocast():
            logprobs, entropy = response_logprobs(roles, "policy", mb, pc.temperature, with_entropy=True)
        pg_loss, pg_stats = core.policy_loss(logprobs, mb.logprobs, advantages[micro], mask, pc.clip_range)
        if not torch.isfinite(pg_loss):
            ok = False
            break
        (pg_loss / d.ppo_grad_accum).backward()
        with acc.autocast():
            values = response_values(roles, mb)
        vf_loss, vf_stats = core.value_loss(values, mb.values, returns[micro], mask, pc.clip_range_value)
        if not torch.isfinite(vf_loss):
            ok = False
            break
        (pc.vf_coef * vf_loss / d.ppo_grad_accum).backward()
        for k, v in {
            "policy/loss": pg_loss,
            "value/loss": vf_loss,
            "policy/entropy": masked_mean(entropy, mask),
            **{f"policy/{k}": v for k, v in pg_stats.items()},
            **{f"value/{k}": v for k, v in vf_stats.items()},
        }.items():
            stats[k] = stats.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / d.ppo_grad_accum
    ok = _every_rank(ok, acc)
    if ok:
        _average_gradients(params, acc)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, pc.max_grad_norm)
        ok = bool(torch.isfinite(torch.as_tensor(grad_norm)))
        stats["policy/grad_norm"] = float(grad_norm)
    if ok:
        opt.step()
    else:
        warnings.warn("non-finite PPO loss or gradient: this optimizer step is skipped", stacklevel=2)
    opt.zero_grad(set_to_none=True)
    return stats, ok


def _every_rank(ok: bool, acc) -> bool:
    """True only if every rank's step was finite (so all ranks skip or step together, never deadlock)."""
    if acc.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=acc.device)
    return float(acc.reduce(flag, reduction="sum")) == 0.0


def _broadcast_from_main(params, acc) -> None:
    """Every rank starts from the main process's trainable weights (what DDP does when it wraps a model)."""
    if acc.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def _check_replicas_agree(params, acc) -> None:
    """Every rank must end with the same trainable weights; a silent divergence would corrupt the save."""
    if acc.num_processes == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    sums = acc.gather(checksum)
    if float(sums.max() - sums.min()) != 0.0:
        raise RuntimeError(f"PPO replicas diverged across ranks (weight checksums {sums.tolist()})")


def _average_gradients(params, acc) -> None:
    """Data parallelism for PPO: average the trainable gradients over ranks in one flat all-reduce.

    The roles switch adapters and call inner modules directly, which a DDP wrapper's forward would not
    see; the trainable set (LoRA adapters + value head, or the policy and value models) is reduced here."""
    if acc.num_processes == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= acc.num_processes
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
        offset += g.numel()


def _rollout_metrics(ro: Rollout, kl, returns, kl_coef: float, tok, batch_posts) -> dict[str, float]:
    """What the rollout says: reward-model score, KL to the reference (k1 and k3), lengths, EOS rate,
    value quality, and on the testbed the gold score of the sampled responses (the truth PPO cannot see)."""
    from prefopt.eval.text_metrics import gold_scores, is_testbed
    from prefopt.generate import decode_responses

    mask = ro.response_mask
    seq_kl = (kl * mask).sum(1)
    seq_k3 = (core.kl_penalty(ro.logprobs, ro.ref_logprobs, "k3") * mask).sum(1)
    m = {
        "objective/score": float(ro.scores.mean()),
        "objective/score_std": float(ro.scores.std()) if len(ro) > 1 else 0.0,
        "objective/raw_score": float(ro.raw_scores.mean()),
        "objective/kl": float(seq_kl.mean()),
        "objective/kl_k3": float(seq_k3.mean()),
        "objective/non_score_reward": float(-kl_coef * seq_kl.mean()),
        "response/length": float(mask.sum(1).float().mean()),
        "response/eos_rate": float(ro.has_eos.float().mean()),
        "value/explained_variance": float(core.explained_variance(ro.values, returns, mask)),
        "value/mean": float(masked_mean(ro.values, mask)),
    }
    if is_testbed(batch_posts):
        texts = decode_responses(tok, ro.responses.tolist())
        m["gold/score"] = sum(gold_scores(batch_posts, texts)) / len(texts)
    return m


def _write_samples(out_dir: Path, update: int, ro: Rollout, tok, posts, idx, n: int = 8) -> None:
    from prefopt.generate import decode_responses

    texts = decode_responses(tok, ro.responses[:n].tolist())
    with open(out_dir / "samples.jsonl", "a", encoding="utf-8") as f:
        for j, text in enumerate(texts):
            f.write(
                json.dumps(
                    {
                        "update": update,
                        "prompt": posts[idx[j]].prompt,
                        "response": text,
                        "score": float(ro.scores[j]),
                        "has_eos": bool(ro.has_eos[j]),
                    }
                )
                + "\n"
            )


def _train_posts(cfg: Config):
    """PPO prompts: the posts of the SFT training split (their summaries are not used). A run that sees
    fewer episodes than there are posts loads and tokenises only the first `total_episodes` of them."""
    limits = [n for n in (cfg.data.limit_train, cfg.ppo.total_episodes) if n]
    ex = load_sft(
        cfg.data.sft_source,
        cfg.data.train_split,
        layout=cfg.data.layout,
        on_bad_row=cfg.data.on_bad_row,
        limit=min(limits),
        seed=cfg.seed,
    )
    return [e.post for e in ex]


def _prompt_indices(n: int, update: int, batch: int, seed: int) -> list[int]:
    """Prompts of update u: positions [u*batch, (u+1)*batch) of a stream of per-epoch shuffles."""
    return [_epoch_shuffle(n, seed + g // n)[g % n] for g in range(update * batch, (update + 1) * batch)]


@functools.lru_cache(maxsize=2)
def _epoch_shuffle(n: int, seed: int) -> list[int]:
    """One epoch's prompt order, shuffled once (not once per index: n can be ~100k real posts)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _resume(st: Stage, roles, opt, sched, kl_ctl) -> int:
    """The latest checkpoint's trainable roles, optimizer, scheduler, RNG and KL controller; its update."""
    extra = load_latest(st, opt, sched, roles.load_trainable_state)
    if extra is None:
        return 0
    kl_ctl.load_state_dict(extra["kl_ctl"])
    return int(extra["step"])


def _save_ckpt(st: Stage, roles, opt, sched, kl_ctl, update: int) -> None:
    save_state(
        st, update, roles.trainable_state, opt, sched, st.cfg.ppo.keep_last, {"kl_ctl": kl_ctl.state_dict()}
    )
