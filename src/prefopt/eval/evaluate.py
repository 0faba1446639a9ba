"""The evaluation stage: the SFT and PPO policies on held-out posts, scored every way we can.

1. held-out posts (`cfg.eval.n_posts` of `data.eval_split`) and their reference summaries
2. each policy writes a summary at low temperature (`eval.temperature`, 0 = greedy) within the PPO
   response budget; PPO first, so only one policy is in memory at a time
3. KL to SFT of each PPO summary, by teacher forcing its tokens through both policies
4. reward-model score of every summary (references too), gold score on the testbed, ROUGE, length, EOS
5. win rates against the references and against SFT by gold, reward model and the optional judge
6. a seeded bootstrap 95% interval on every mean and rate; `results.json` + `samples.jsonl`

Without `<run>/ppo/model` only the SFT column is evaluated; without `<run>/reward/model` the
reward-model columns are skipped. Both are noted in `results.json["notes"]`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefopt.batching import collate_left, completion_ids, position_ids, prompt_ids
from prefopt.config import Config
from prefopt.eval import stats
from prefopt.eval.text_metrics import gold_scores, is_testbed, rouge
from prefopt.models.adapters import META
from prefopt.runs import atomic_write_json, atomic_write_text
from prefopt.stage import open_stage

RESULTS = "results.json"
SAMPLES = "samples.jsonl"
PAIRS = (("ppo", "reference"), ("sft", "reference"), ("ppo", "sft"))
KL_NOTE = (
    "kl_to_sft: sum over response tokens of log pi - log pi_sft (logits at temperature 1) on the "
    "evaluated low-temperature responses; it measures how far the evaluated summaries moved from SFT, "
    "not an on-policy KL estimate (see the PPO curves for that)."
)


@dataclass
class PolicyOutput:
    """One policy's summaries of the held-out posts (responses cut after the first EOS)."""

    texts: list[str]
    responses: list[list[int]]
    has_eos: list[bool]
    kl: list[float]  # k1: sum of log pi - log pi_sft over response tokens
    kl_k3: list[float]  # k3 = sum of (r - 1) - log r, r = pi_sft / pi


def run(cfg: Config, accelerator=None) -> Path:
    """Run the evaluation stage; returns `<run>/eval`. Work runs on the main process only."""
    with open_stage(cfg, "eval", accelerator) as st:
        info: dict[str, Any] = {}
        if st.is_main:
            t0 = time.time()
            results = evaluate(cfg, st.dir, device=str(st.accelerator.device), log=st.print)
            info = headline(results) | {"seconds": time.time() - t0}
            for line in summary_lines(results):
                st.print(line)
        st.finish(info)
    return st.dir


def evaluate(
    cfg: Config,
    out_dir: Path,
    *,
    device: str | None = None,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate the run's policies and write `results.json` and `samples.jsonl` into `out_dir`."""
    from prefopt.data.load import load_sft
    from prefopt.models.load import load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = cfg.run_dir
    sft_dir, ppo_dir, rm_dir = (
        run_dir / "sft" / "model",
        run_dir / "ppo" / "model",
        run_dir / "reward" / "model",
    )
    if not (sft_dir / META).is_file():
        raise FileNotFoundError(f"{sft_dir} holds no SFT policy: run `prefopt sft` first")
    notes = [KL_NOTE]

    # 1. held-out posts and references
    tok = load_tokenizer(str(sft_dir), eos_token=cfg.model.eos_token)
    examples = load_sft(
        cfg.data.sft_source,
        cfg.data.eval_split,
        layout=cfg.data.layout,
        on_bad_row=cfg.data.on_bad_row,
        limit=cfg.eval.n_posts,
        seed=cfg.seed,
    )
    posts = [ex.post for ex in examples]
    prompts = [prompt_ids(p, tok, cfg.data.max_prompt_tokens) for p in posts]
    budget = cfg.ppo.response_length
    refs = [ex.summary for ex in examples]
    ref_ids = [_reference_ids(s, tok, budget) for s in refs]
    log(f"{len(examples)} held-out posts from {cfg.data.sft_source}:{cfg.data.eval_split}")

    # 2-3. summaries; PPO first so that its KL to SFT needs one policy in memory at a time
    outputs: dict[str, PolicyOutput] = {}
    ppo_lp: list[list[float]] | None = None
    if (ppo_dir / META).is_file():
        model = _load_policy(ppo_dir, tok, cfg, device)
        outputs["ppo"] = _summaries(model, prompts, tok, cfg, budget, batch_size)
        ppo_lp = response_logprobs(model, prompts, outputs["ppo"].responses, tok.pad_token_id, batch_size)
        del model
    else:
        notes.append(f"no PPO policy at {ppo_dir}: only SFT is evaluated")
    model = _load_policy(sft_dir, tok, cfg, device)
    outputs["sft"] = _summaries(model, prompts, tok, cfg, budget, batch_size)
    if ppo_lp is not None:
        sft_lp = response_logprobs(model, prompts, outputs["ppo"].responses, tok.pad_token_id, batch_size)
        outputs["ppo"].kl, outputs["ppo"].kl_k3 = kl_estimates(ppo_lp, sft_lp)
    del model
    _free(device)
    log("sampled " + ", ".join(outputs))

    # 4. scores per item: {scorer: {column: [N]}}
    columns = {"reference": ref_ids} | {name: out.responses for name, out in outputs.items()}
    texts = {"reference": refs} | {name: out.texts for name, out in outputs.items()}
    scores: dict[str, dict[str, list[float]]] = {}
    testbed = is_testbed(posts)
    if testbed:
        scores["gold"] = {c: gold_scores(posts, t) for c, t in texts.items()}
    if (rm_dir / META).is_file():
        from prefopt.reward.model import load_reward_model

        rm = load_reward_model(rm_dir, tok, device, dtype=cfg.model.dtype)
        scores["reward"] = {
            c: reward_scores(rm, prompts, ids, tok.pad_token_id, batch_size) for c, ids in columns.items()
        }
        del rm
        _free(device)
    else:
        notes.append(f"no reward model at {rm_dir}: reward-model scores and win rates skipped")
    rouges = {
        name: [rouge([t], [r]) for t, r in zip(out.texts, refs, strict=True)] for name, out in outputs.items()
    }

    # 5. judge (optional)
    judged: dict[str, Any] = {}
    if cfg.eval.judge:
        judged = _run_judge(cfg, posts, texts, log)
        if "error" in judged:
            notes.append(f"judge skipped: {judged['error']}")

    # 6. estimates with intervals, written out
    results = summarise(cfg, posts, outputs, ref_ids, scores, rouges, judged, testbed, notes)
    atomic_write_json(out_dir / RESULTS, results)
    rows = sample_rows(posts, texts, outputs, ref_ids, scores, judged)
    atomic_write_text(out_dir / SAMPLES, "".join(json.dumps(r) + "\n" for r in rows))
    return results


# ------------------------------------------------------------------------------------- model work


def _load_policy(model_dir: Path, tok, cfg: Config, device: str):
    from prefopt.models.adapters import load_merged_policy

    return load_merged_policy(model_dir, tok, dtype=cfg.model.dtype, device=device).eval()


def _summaries(model, prompts, tok, cfg: Config, budget: int, batch_size: int) -> PolicyOutput:
    from prefopt.generate import decode_responses, sample, truncate_at_eos

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    raw = sample(
        model,
        prompts,
        max_new_tokens=budget,
        temperature=cfg.eval.temperature,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        batch_size=batch_size,
        generator=gen,
    )
    cut = [truncate_at_eos(r, tok.eos_token_id) for r in raw]
    n = len(raw)
    return PolicyOutput(
        decode_responses(tok, raw), [c[0] for c in cut], [c[1] for c in cut], [0.0] * n, [0.0] * n
    )


@torch.no_grad()
def response_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
) -> list[list[float]]:
    """log pi(token) of every response token given its prompt, by teacher forcing (logits at T = 1).

    Prompts are left-padded and responses right-padded, so each batch is [B, P + R] with the response
    block aligned; positions count real tokens only (as during sampling), and the logits at position
    P-1+t score response token t. Returns one list per response, of its length.
    """
    from prefopt.ops import logprobs_from_logits

    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        q = collate_left(prompts[start : start + batch_size], pad_id)
        chunk = responses[start : start + batch_size]
        width = max(len(r) for r in chunk)
        r_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        r_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            r_ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            r_mask[i, : len(r)] = 1
        ids = torch.cat([q["input_ids"], r_ids], 1).to(device)
        mask = torch.cat([q["attention_mask"], r_mask], 1).to(device)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=width + 1
        ).logits[:, :-1]  # [B, R, V]: position P-1+t predicts response token t
        lp = logprobs_from_logits(logits, r_ids.to(device)).cpu()  # [B, R]
        out += [lp[i, : len(r)].tolist() for i, r in enumerate(chunk)]
    return out


def kl_estimates(
    lp_policy: Sequence[Sequence[float]], lp_ref: Sequence[Sequence[float]]
) -> tuple[list[float], list[float]]:
    """Per response: k1 = sum(log pi - log ref) and k3 = sum((r - 1) - log r) with r = ref / pi."""
    k1, k3 = [], []
    for a, b in zip(lp_policy, lp_ref, strict=True):
        log_r = [y - x for x, y in zip(a, b, strict=True)]
        k1.append(-sum(log_r))
        k3.append(sum(math.expm1(v) - v for v in log_r))
    return k1, k3


@torch.no_grad()
def reward_scores(
    rm,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
) -> list[float]:
    """Reward-model score of each prompt + response (read at the last real token; left-padded batches)."""
    device = next(rm.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [
            list(p) + list(r)
            for p, r in zip(
                prompts[start : start + batch_size], responses[start : start + batch_size], strict=True
            )
        ]
        batch = collate_left(seqs, pad_id)
        out += (
            rm.score(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu().tolist()
        )
    return out


def _reference_ids(summary: str, tok, budget: int) -> list[int]:
    """The reference as the policy would write it: " " + summary + EOS, cut to the budget (ending in EOS)."""
    ids = completion_ids(" " + summary, tok)
    return ids if len(ids) <= budget else ids[: budget - 1] + [tok.eos_token_id]


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _judge_post(post) -> str:
    return post.prompt.removesuffix("TL;DR:").rstrip()


def _run_judge(cfg: Config, posts, texts: dict[str, list[str]], log) -> dict[str, Any]:
    """{pair: PairwiseJudgement} for every pair of columns, or {"error": why} when the judge is unusable."""
    from prefopt.eval.judge import JudgeError, judge_pairwise, make_judge

    post_texts = [_judge_post(p) for p in posts]
    out: dict[str, Any] = {}
    try:
        judge = make_judge(cfg.eval.judge)
        for k, (a, b) in enumerate(PAIRS):
            if a in texts and b in texts:
                out[f"{a}_vs_{b}"] = judge_pairwise(judge, post_texts, texts[a], texts[b], seed=cfg.seed + k)
                log(f"judged {a} vs {b}: {out[f'{a}_vs_{b}'].failures} failures")
    except JudgeError as err:
        log(f"judge unusable, skipped: {err}")
        return {"error": str(err)}
    return out


# ------------------------------------------------------------------------------------- outputs


def summarise(cfg, posts, outputs, ref_ids, scores, rouges, judged, testbed, notes) -> dict[str, Any]:
    """results.json: per-column means and per-pair win rates, each an Estimate dict (value, lo, hi, n)."""
    boot = {"n_boot": cfg.eval.bootstrap, "seed": cfg.seed}

    def est(values) -> dict:
        return stats.mean_ci(values, **boot).to_dict()

    # the reference's length is counted as the policies' is: " " + summary + EOS, within the budget
    policies: dict[str, dict] = {"reference": {"length": est([len(r) for r in ref_ids])}}
    for name, out in outputs.items():
        policies[name] = {
            "length": est([len(r) for r in out.responses]),
            "eos_rate": est([float(e) for e in out.has_eos]),
            "kl_to_sft": est(out.kl),
            "kl_k3_to_sft": est(out.kl_k3),
        }
        for key in ("rouge1", "rouge2", "rougeL"):
            policies[name][key] = est([r[key] for r in rouges[name]])
    for scorer, cols in scores.items():
        for col, values in cols.items():
            policies[col][scorer] = est(values)

    win_rates: dict[str, dict] = {}
    differences: dict[str, dict] = {}
    for scorer, cols in scores.items():
        label = "reward_model" if scorer == "reward" else scorer
        win_rates[label] = {
            f"{a}_vs_{b}": stats.win_rate_ci(cols[a], cols[b], **boot).to_dict()
            for a, b in PAIRS
            if a in cols and b in cols
        }
        if "ppo" in cols:
            differences[label] = {
                "ppo_minus_sft": stats.paired_diff_ci(cols["ppo"], cols["sft"], **boot).to_dict()
            }
    judge_failures = {}
    if judged and "error" not in judged:
        win_rates["judge"] = {pair: stats.mean_ci(j.outcomes, **boot).to_dict() for pair, j in judged.items()}
        judge_failures = {pair: j.failures for pair, j in judged.items()}
    return {
        "n_posts": len(posts),
        "split": cfg.data.eval_split,
        "source": cfg.data.sft_source,
        "temperature": cfg.eval.temperature,
        "response_length": cfg.ppo.response_length,
        "bootstrap": cfg.eval.bootstrap,
        "seed": cfg.seed,
        "testbed": testbed,
        "judge": cfg.eval.judge,
        "policies": policies,
        "win_rates": win_rates,
        "differences": differences,
        "judge_failures": judge_failures,
        "notes": notes,
    }


def sample_rows(posts, texts, outputs, ref_ids, scores, judged) -> list[dict[str, Any]]:
    """samples.jsonl: per post its text, the reference and each policy's summary with their scores."""
    rows = []
    for i, post in enumerate(posts):
        row: dict[str, Any] = {"index": i, "id": post.id, "post": post.prompt}
        row |= {col: t[i] for col, t in texts.items()}
        row["length"] = {"reference": len(ref_ids[i])} | {n: len(o.responses[i]) for n, o in outputs.items()}
        row["eos"] = {n: o.has_eos[i] for n, o in outputs.items()}
        if "ppo" in outputs:
            row["kl"] = {"ppo": outputs["ppo"].kl[i]}
        for scorer, cols in scores.items():
            row[scorer] = {col: v[i] for col, v in cols.items()}
        if judged and "error" not in judged:
            row["judge"] = {pair: j.outcomes[i] for pair, j in judged.items()}
        rows.append(row)
    return rows


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The few numbers worth a glance (for DONE.json and the terminal), flat."""
    out: dict[str, float] = {"n_posts": results["n_posts"]}
    for scorer, pairs in results.get("win_rates", {}).items():
        for pair, e in pairs.items():
            out[f"win_rate/{scorer}/{pair}"] = e["value"]
    for name in ("sft", "ppo"):
        col = results["policies"].get(name, {})
        for key in ("gold", "reward", "kl_to_sft", "length", "eos_rate"):
            if key in col:
                out[f"{name}/{key}"] = col[key]["value"]
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Human-readable lines: each win rate and the main means, with their 95% intervals."""

    def fmt(e: dict, percent: bool = False) -> str:
        return stats.Estimate(**e).fmt(percent=percent)

    lines = []
    for scorer, pairs in results.get("win_rates", {}).items():
        for pair, e in pairs.items():
            lines.append(f"win rate ({scorer}) {pair.replace('_vs_', ' vs ')}: {fmt(e, percent=True)}")
    for name in ("sft", "ppo"):
        col = results["policies"].get(name)
        if col:
            parts = [f"{k}={fmt(col[k])}" for k in ("gold", "reward", "kl_to_sft", "length") if k in col]
            lines.append(f"{name}: " + "  ".join(parts))
    return lines
