"""Scores of generated summaries: ROUGE against references, and the testbed's gold labeler."""

from __future__ import annotations

from collections.abc import Sequence

from prefopt.data.types import Post


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (rouge-score, stemmed)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    n = max(1, len(predictions))
    return {k: v / n for k, v in totals.items()}


def is_testbed(posts: Sequence[Post]) -> bool:
    from prefopt.data.testbed import is_testbed_post

    return bool(posts) and all(is_testbed_post(p) for p in posts)


def gold_scores(posts: Sequence[Post], summaries: Sequence[str]) -> list[float]:
    from prefopt.data.testbed import gold_score

    return [gold_score(p, s) for p, s in zip(posts, summaries, strict=True)]


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of items where a beats b, ties counting one half."""
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))
    return wins / max(1, len(a))
