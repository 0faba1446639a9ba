"""How good is the reward model: held-out accuracy, calibration, length bias, and (testbed) gold agreement.

Everything here works on plain lists of scores, so it is tested without a model:
  accuracy        fraction of pairs with r_chosen > r_rejected (a tie counts one half)
  by confidence   the same per labeler confidence (OpenAI's 1-9), where the data has it
  calibration     predicted P(a preferred) = sigmoid(r_a - r_b) against the observed label frequency, in bins
  length          correlation of reward with summary length, and who prefers the longer summary
  testbed         label-noise ceiling (the noiseless gold labeler's accuracy on these noisy labels) and
                  agreement of the reward model with gold
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from prefopt.data.types import Comparison

RELIABILITY_PNG = "reliability.png"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _hit(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float:
    """Fraction of pairs where the chosen summary scores higher; ties count one half."""
    return sum(_hit(a, b) for a, b in zip(r_chosen, r_rejected, strict=True)) / max(1, len(r_chosen))


def accuracy_by_confidence(
    r_chosen: Sequence[float], r_rejected: Sequence[float], confidence: Sequence[int | None]
) -> dict[str, dict[str, float]]:
    """{"<confidence>": {"n", "accuracy"}} over pairs that have a confidence; {} when none has."""
    groups: dict[int, list[float]] = defaultdict(list)
    for a, b, c in zip(r_chosen, r_rejected, confidence, strict=True):
        if c is not None:
            groups[int(c)].append(_hit(a, b))
    return {str(c): {"n": len(h), "accuracy": sum(h) / len(h)} for c, h in sorted(groups.items())}


def calibration(r_chosen: Sequence[float], r_rejected: Sequence[float], n_bins: int = 10) -> dict:
    """Reliability table of the Bradley-Terry probability.

    Every pair is counted in both orders: (chosen, rejected) predicts p = sigmoid(r_c - r_r) with
    outcome 1, and (rejected, chosen) predicts 1 - p with outcome 0. (With one order only, every
    outcome would be 1 and the table would say nothing.) Returns per-bin lower edge, count, mean
    prediction and observed frequency (None in an empty bin), and the expected calibration error
    ECE = sum_b n_b / N * |observed_b - predicted_b|.
    """
    preds: list[tuple[float, float]] = []
    for a, b in zip(r_chosen, r_rejected, strict=True):
        p = sigmoid(a - b)
        preds += [(p, 1.0), (1.0 - p, 0.0)]
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for p, y in preds:
        bins[min(int(p * n_bins), n_bins - 1)].append((p, y))
    table, ece = [], 0.0
    for k, rows in enumerate(bins):
        pred = sum(p for p, _ in rows) / len(rows) if rows else None
        obs = sum(y for _, y in rows) / len(rows) if rows else None
        if rows:
            ece += len(rows) / len(preds) * abs(obs - pred)
        table.append({"lo": k / n_bins, "n": len(rows), "predicted": pred, "observed": obs})
    return {"bins": table, "ece": ece}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than 2 points."""
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def length_bias(
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
    len_chosen: Sequence[int],
    len_rejected: Sequence[int],
) -> dict[str, float]:
    """Correlation of reward with length (tokens) over all summaries; how often labelers and the
    model prefer the longer summary of a pair (pairs of equal length left out)."""
    diff = [
        (lc, lr, a, b)
        for a, b, lc, lr in zip(r_chosen, r_rejected, len_chosen, len_rejected, strict=True)
        if lc != lr
    ]
    return {
        "corr_reward_length": pearson([*r_chosen, *r_rejected], [*len_chosen, *len_rejected]),
        "labels_prefer_longer": sum(lc > lr for lc, lr, _, _ in diff) / len(diff) if diff else math.nan,
        "model_prefers_longer": (
            sum((a > b) == (lc > lr) for lc, lr, a, b in diff) / len(diff) if diff else math.nan
        ),
    }


def gold_agreement(
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
    gold_chosen: Sequence[float],
    gold_rejected: Sequence[float],
) -> dict[str, float]:
    """Fraction of pairs where sign(r_c - r_r) == sign(g_c - g_r), over pairs gold does not tie
    (a gold tie expresses no preference to agree with); a reward tie counts one half."""
    hits = [
        _hit(a, b) if gc > gr else _hit(b, a)
        for a, b, gc, gr in zip(r_chosen, r_rejected, gold_chosen, gold_rejected, strict=True)
        if gc != gr
    ]
    return {
        "gold_agreement": sum(hits) / len(hits) if hits else math.nan,
        "gold_ties": len(r_chosen) - len(hits),
    }


def fact_check(
    r_faithful: Sequence[float], r_swapped: Sequence[float], slots: Sequence[str]
) -> dict[str, float]:
    """Per slot (and "all"): how often the faithful summary outscores its one-fact-swapped twin
    (`testbed.fact_swaps`); 0.5 is a scorer that does not check that fact at all. A tie counts one half."""
    by: dict[str, list[float]] = {}
    for a, b, slot in zip(r_faithful, r_swapped, slots, strict=True):
        by.setdefault(slot, []).append(_hit(a, b))
        by.setdefault("all", []).append(_hit(a, b))
    return {slot: sum(h) / len(h) for slot, h in by.items()}


def evaluate_scores(
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
    comparisons: Sequence[Comparison],
    len_chosen: Sequence[int],
    len_rejected: Sequence[int],
    *,
    n_bins: int = 10,
) -> dict:
    """Every held-out measure as one JSON-ready dict (the content of `eval.json`)."""
    margins = [a - b for a, b in zip(r_chosen, r_rejected, strict=True)]
    out = {
        "n": len(margins),
        "accuracy": accuracy(r_chosen, r_rejected),
        "mean_margin": sum(margins) / max(1, len(margins)),
        "accuracy_by_confidence": accuracy_by_confidence(
            r_chosen, r_rejected, [c.confidence for c in comparisons]
        ),
        "calibration": calibration(r_chosen, r_rejected, n_bins),
        "length": length_bias(r_chosen, r_rejected, len_chosen, len_rejected),
    }
    from prefopt.data import testbed

    if comparisons and all(testbed.is_testbed_post(c.post) for c in comparisons):
        g_c, g_r = zip(*(_golds(c, testbed.gold_score) for c in comparisons), strict=True)
        ceiling = testbed.noise_ceiling(list(comparisons))
        out["testbed"] = {
            "noise_ceiling": ceiling,
            "gap_to_ceiling": ceiling - out["accuracy"],
            **gold_agreement(r_chosen, r_rejected, g_c, g_r),
        }
        # pairs where one side has a wrong fact: a scorer gets them right only by checking the post
        wf = [i for i, c in enumerate(comparisons) if "wrong_fact" in _qualities(c)]
        if wf:
            pick = lambda xs: [xs[i] for i in wf]  # noqa: E731
            sub = gold_agreement(pick(r_chosen), pick(r_rejected), pick(g_c), pick(g_r))
            out["testbed"]["gold_agreement_wrong_fact_pairs"] = sub["gold_agreement"]
    return out


def _qualities(c: Comparison) -> tuple:
    return c.meta.get("quality_chosen"), c.meta.get("quality_rejected")


def _golds(c: Comparison, gold_score) -> tuple[float, float]:
    """Gold scores of both sides (the testbed stores them in `meta`; recomputed otherwise)."""
    if "gold_chosen" in c.meta and "gold_rejected" in c.meta:
        return c.meta["gold_chosen"], c.meta["gold_rejected"]
    return gold_score(c.post, c.chosen), gold_score(c.post, c.rejected)


def flat_metrics(report: dict) -> dict[str, float]:
    """The scalar measures of `evaluate_scores`, named `eval/...`, for metrics.jsonl."""
    out = {"eval/accuracy": report["accuracy"], "eval/mean_margin": report["mean_margin"]}
    out["eval/ece"] = report["calibration"]["ece"]
    out |= {f"eval/length/{k}": v for k, v in report["length"].items()}
    out |= {
        f"eval/confidence_{c}/accuracy": v["accuracy"] for c, v in report["accuracy_by_confidence"].items()
    }
    out |= {f"eval/testbed/{k}": v for k, v in testbed_scalars(report).items()}
    return out


def testbed_scalars(report: dict) -> dict[str, float]:
    """The testbed section as flat scalars; `fact_check`'s per-slot rates become `fact_check/<slot>`."""
    out: dict[str, float] = {}
    for k, v in (report.get("testbed") or {}).items():
        out |= {f"{k}/{slot}": x for slot, x in v.items()} if isinstance(v, dict) else {k: v}
    return out


def reliability_plot(calib: dict, path: Path, title: str = "reward model calibration") -> Path:
    """Observed against predicted P(preferred) per bin, with the diagonal and the bin counts; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [b for b in calib["bins"] if b["n"]]
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([b["predicted"] for b in rows], [b["observed"] for b in rows], "o-", label="reward model")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"{title} (ECE {calib['ece']:.3f})")
    ax.legend(loc="upper left")
    width = 1.0 / len(calib["bins"])
    ax_n.bar([b["lo"] for b in calib["bins"]], [b["n"] for b in calib["bins"]], width=width, align="edge")
    ax_n.set_xlabel("predicted P(preferred) = sigmoid(r_a - r_b)")
    ax_n.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
