"""The embedded testbed: an offline world of Reddit-like posts where the truth is known.

* Posts: post `index` of `seed` depends only on (seed, index) (`random.Random(f"{seed}:{index}")`)
  and has id `tb-{seed}-{index}`, so `facts_of(post)` regenerates its key facts from the id alone and
  `gold_score(post, summary)` works for any testbed post (even one whose body was truncated).
* Splits are disjoint index ranges: train from 0, valid from 10M, test from 20M, `corpus()` from 30M.
  Default sizes (`DEFAULT_SIZES`): train 20,000, valid 1,000, test 1,000 (for SFT and comparisons alike).
  SFT examples and comparisons of a split share its posts (different summaries, different random streams).
* References: `testbed_writers` (mixed quality). Gold labeler: `testbed_gold` (scale and weights).
* Comparisons: two summaries of one post by writers drawn from the reference mix, labelled by a
  Bradley-Terry labeler on the gold score, P(a preferred) = sigmoid((g_a - g_b) / TAU). TAU is tuned so
  two independent labelers agree ~75% (about human agreement on TL;DR; `python -m prefopt.data.testbed`).

Run `python -m prefopt.data.testbed` for the generation time and the statistics of the data.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from prefopt.data.testbed_gold import Facts, GoldBreakdown, score_facts
from prefopt.data.testbed_text import (
    AMOUNTS,
    CLOSINGS,
    CONTEXT,
    DETAIL_SLOTS,
    DETAILS,
    EVENT_LEADS,
    EVENTS,
    FEELING_LINES,
    FEELINGS,
    INTRO_BACKGROUND,
    INTRO_LEADS,
    INTROS,
    PREAMBLES,
    QUESTION_LINES,
    QUESTIONS,
    REACTIONS,
    RELATIONS,
    SUBREDDITS,
    TITLES,
    TYPICAL,
    YEARS,
    strip_marks,
)
from prefopt.data.testbed_writers import (
    FACT_SLOTS,
    QUALITIES,
    QUALITY_MIX,
    canonical_parts,
    draw_parts,
    pronouns,
    render,
    render_clean,
    sample_quality,
    swap_fact,
)
from prefopt.data.types import Comparison, Post, SFTExample

__all__ = [
    "DEFAULT_SIZES",
    "QUALITY_MIX",
    "SPLIT_OFFSETS",
    "TAU",
    "Draft",
    "FactSwap",
    "Facts",
    "GoldBreakdown",
    "bench",
    "clean_summary",
    "corpus",
    "expected_agreement",
    "fact_swaps",
    "facts_of",
    "gold_breakdown",
    "gold_score",
    "is_testbed_post",
    "labeler_agreement",
    "load_comparisons",
    "load_sft",
    "make_draft",
    "noise_ceiling",
    "p_prefer",
    "tune_tau",
]

SPLIT_OFFSETS = {"train": 0, "valid": 10_000_000, "test": 20_000_000}
CORPUS_OFFSET = 30_000_000
DEFAULT_SIZES = {"train": 20_000, "valid": 1_000, "test": 1_000}
TYPICAL_SHARE = 0.9  # P(a post keeps its event's usual feeling / question), see testbed_text.TYPICAL
SUMMARIES_PER_POST = 2  # writers per post in the comparisons (all pairs among them are labelled)
TAU = 0.144  # Bradley-Terry temperature on the gold scale (tuned: two labelers agree ~0.75)

_ID = re.compile(r"^tb-(\d+)-(\d+)$")
_REL_KEYS = tuple(RELATIONS)
_FEEL_KEYS = tuple(FEELINGS)
_Q_KEYS = tuple(QUESTIONS)
_EVENTS_BY_GROUP = {g: tuple(k for k, e in EVENTS.items() if g in e.groups) for g in SUBREDDITS}
_DETAILS = tuple(strip_marks(t) for t in DETAILS)
_PREAMBLES = tuple(strip_marks(t) for t in PREAMBLES)
_CLOSINGS = tuple(strip_marks(t) for t in CLOSINGS)


@dataclass(frozen=True)
class Draft:
    """A generated post with what its writers may copy (its preamble and irrelevant details)."""

    post: Post
    facts: Facts
    preamble: str
    details: tuple[str, ...]


# ---------------------------------------------------------------- ids and facts


def post_id(seed: int, index: int) -> str:
    return f"tb-{seed}-{index}"


def is_testbed_post(post: Post) -> bool:
    return isinstance(post.id, str) and _ID.match(post.id) is not None


def _other_age(rng: random.Random, relation: str, writer_age: int) -> int:
    lo, hi = {
        "mom": (20, 32), "dad": (20, 34), "sister": (-8, 8), "brother": (-8, 8),
        "boss": (2, 20), "coworker": (-5, 10), "roommate": (-3, 3), "best_friend": (-2, 2),
    }.get(relation, (-4, 6))  # fmt: skip
    return max(14 if relation in ("sister", "brother") else 18, writer_age + rng.randint(lo, hi))


def _draw_facts(rng: random.Random) -> Facts:
    """Always the first draws of a post's stream, so facts can be regenerated without the text."""
    relation = rng.choice(_REL_KEYS)
    rel = RELATIONS[relation]
    other_gender = rel.gender or rng.choice("mf")
    writer_gender = rng.choice("mf")
    writer_age = rng.randint(18, 38)
    other_age = _other_age(rng, relation, writer_age)
    event = rng.choice(_EVENTS_BY_GROUP[rel.group])
    feel, question = TYPICAL[event]  # the event's usual feeling and question, kept most of the time
    return Facts(
        relation=relation,
        other_age=other_age,
        other_gender=other_gender,
        writer_age=writer_age,
        writer_gender=writer_gender,
        event=event,
        feeling=feel if rng.random() < TYPICAL_SHARE else rng.choice(_FEEL_KEYS),
        question=question if rng.random() < TYPICAL_SHARE else rng.choice(_Q_KEYS),
        subreddit=rng.choice(SUBREDDITS[rel.group]),
    )


@lru_cache(maxsize=1 << 16)
def _facts(seed: int, index: int) -> Facts:
    return _draw_facts(random.Random(f"{seed}:{index}"))


def facts_of(post: Post) -> Facts:
    """The key facts of a testbed post, regenerated from its id `tb-{seed}-{index}`."""
    m = _ID.match(post.id or "")
    if m is None:
        raise ValueError(f"not a testbed post (id must look like 'tb-<seed>-<index>'): id={post.id!r}")
    return _facts(int(m.group(1)), int(m.group(2)))


# ---------------------------------------------------------------- posts


def _fill(rng: random.Random, facts: Facts, rel_word: str) -> dict[str, str]:
    """Placeholder values shared by every sentence of one post."""
    slots = {k: rng.choice(v) for k, v in DETAIL_SLOTS.items()}
    slots.update(pronouns(facts.other_gender), rel=rel_word, otag=facts.other_tag, wtag=facts.writer_tag)
    slots.update(
        years=rng.choice(YEARS), amount=rng.choice(AMOUNTS), feel=rng.choice(FEELINGS[facts.feeling])
    )
    slots["ev"] = rng.choice(EVENTS[facts.event].post).format(**slots)
    slots["q"] = rng.choice(QUESTIONS[facts.question].phrasings).format(**slots)
    return slots


def _title(rng: random.Random, facts: Facts, s: dict[str, str]) -> str:
    ev_short = rng.choice(EVENTS[facts.event].summary).format(**s)
    rel = rng.choice(RELATIONS[facts.relation].words)
    return rng.choice(TITLES).format(**{**s, "ev": ev_short, "rel": rel})


def _sentences(rng: random.Random, facts: Facts, s: dict[str, str]) -> tuple[list[str], str, tuple[str, ...]]:
    """The body's sentences in order, with the preamble and details used."""
    group = RELATIONS[facts.relation].group
    pre = rng.sample(_PREAMBLES, rng.choices((0, 1, 2), weights=(0.45, 0.40, 0.15))[0])
    intro = rng.choice(INTROS).format(
        **s, lead=rng.choice(INTRO_LEADS), bg=rng.choice(INTRO_BACKGROUND[group]).format(**s)
    )
    context = rng.sample(CONTEXT[group] + CONTEXT["any"], rng.randint(1, 3))
    details = [d.format(**s) for d in rng.sample(_DETAILS, rng.randint(2, 9))]
    cut = rng.randint(0, len(details))
    before = [c.format(**s) for c in context] + details[:cut]
    after = [r.format(**s) for r in rng.sample(REACTIONS, rng.randint(1, 2))] + details[cut:]
    rng.shuffle(before)
    rng.shuffle(after)
    after.insert(rng.randint(0, min(1, len(after))), rng.choice(FEELING_LINES).format(**s))
    ending = [rng.choice(QUESTION_LINES).format(**s)]
    if rng.random() < 0.3:
        ending.append(rng.choice(_CLOSINGS))
    body = pre + [intro] + before + [rng.choice(EVENT_LEADS).format(**s)] + after + ending
    return body, pre[0] if pre else "", tuple(details)


def _paragraphs(rng: random.Random, sentences: list[str]) -> str:
    """Join sentences into 1-4 paragraphs (OpenAI's truncation cuts at newlines)."""
    n_breaks = min(len(sentences) - 1, rng.randint(0, 3))
    breaks = set(rng.sample(range(1, len(sentences)), n_breaks))
    return "".join(("\n\n" if i in breaks else " " if i else "") + t for i, t in enumerate(sentences))


@lru_cache(maxsize=4096)
def make_draft(seed: int, index: int) -> Draft:
    """Post `index` of `seed`: a pure function of (seed, index)."""
    rng = random.Random(f"{seed}:{index}")
    facts = _draw_facts(rng)
    rel_words = RELATIONS[facts.relation].words
    rel_word = rel_words[0] if len(rel_words) == 1 or rng.random() < 0.75 else rel_words[1]
    s = _fill(rng, facts, rel_word)
    title = _title(rng, facts, s)
    sentences, preamble, details = _sentences(rng, facts, s)
    post = Post(facts.subreddit, title, _paragraphs(rng, sentences), post_id(seed, index))
    return Draft(post, facts, preamble, details)


# ---------------------------------------------------------------- gold and references


def gold_breakdown(post: Post, summary: str) -> GoldBreakdown:
    """Every term of the gold score (see `testbed_gold`)."""
    return score_facts(facts_of(post), summary)


def gold_score(post: Post, summary: str) -> float:
    """Gold score of `summary` for testbed `post`: ~1.0 ideal, ~0.7 without the question, < 0 junk."""
    return score_facts(facts_of(post), summary).score


def clean_summary(post: Post) -> str:
    """The ideal summary (canonical phrasing of every fact): the upper anchor of reports."""
    return render_clean(canonical_parts(facts_of(post)))


def write_reference(draft: Draft, quality: str, rng: random.Random) -> str:
    return render(draw_parts(draft.facts, rng), draft.facts, quality, rng, draft.preamble, draft.details)


def _indices(split: str, n: int | None) -> range:
    """The global post indices of the first `n` posts of `split` ("validation" is read as "valid")."""
    split = "valid" if split == "validation" else split
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_OFFSETS)}")
    n = DEFAULT_SIZES[split] if n is None else n
    if not 0 <= n < 10_000_000:
        raise ValueError(f"n must be in [0, 10M), got {n}")
    return range(SPLIT_OFFSETS[split], SPLIT_OFFSETS[split] + n)


def load_sft(split: str = "train", n: int | None = None, seed: int = 0) -> list[SFTExample]:
    """`n` posts of `split` with one reference each; meta: quality, gold."""
    out = []
    for i in _indices(split, n):
        draft = make_draft(seed, i)
        rng = random.Random(f"{seed}:{i}:ref")
        quality = sample_quality(rng)
        summary = write_reference(draft, quality, rng)
        out.append(
            SFTExample(
                draft.post, summary, {"quality": quality, "gold": score_facts(draft.facts, summary).score}
            )
        )
    return out


# ---------------------------------------------------------------- comparisons


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def p_prefer(gold_a: float, gold_b: float, tau: float = TAU) -> float:
    """Bradley-Terry probability that a labeler prefers a over b."""
    return sigmoid((gold_a - gold_b) / tau)


def _distinct_qualities(rng: random.Random, k: int) -> list[str]:
    """`k` different writer qualities, each drawn from the reference mix (redrawn while repeated)."""
    out: list[str] = []
    while len(out) < k:
        q = sample_quality(rng)
        if q not in out:
            out.append(q)
    return out


def post_comparisons(seed: int, index: int, k: int = SUMMARIES_PER_POST) -> list[Comparison]:
    """Post `index`'s k summaries by writers of k different qualities, and all k(k-1)/2 comparisons among
    them, each labelled by its own noisy Bradley-Terry draw (like OpenAI's TL;DR comparisons: ~6 per
    post over ~4 summaries). k = 2 is one comparison per post."""
    if not 2 <= k <= len(QUALITIES):
        raise ValueError(f"summaries per post must be in [2, {len(QUALITIES)}], got {k}")
    draft = make_draft(seed, index)
    rng = random.Random(f"{seed}:{index}:cmp" + ("" if k == 2 else f":{k}"))
    qualities = _distinct_qualities(rng, k)
    texts = [write_reference(draft, q, rng) for q in qualities]
    golds = [score_facts(draft.facts, t).score for t in texts]
    out = []
    for a, b in itertools.combinations(range(k), 2):
        if rng.random() >= p_prefer(golds[a], golds[b]):
            a, b = b, a
        meta = {
            "gold_chosen": golds[a],
            "gold_rejected": golds[b],
            "quality_chosen": qualities[a],
            "quality_rejected": qualities[b],
        }
        out.append(Comparison(draft.post, texts[a], texts[b], None, meta))
    return out


def load_comparisons(
    split: str = "train", n: int | None = None, seed: int = 0, per_post: int = SUMMARIES_PER_POST
) -> list[Comparison]:
    """The first `n` noisy-labelled comparisons of `split` (default: as many as the split has posts),
    post by post, `per_post` summaries each (`post_comparisons`); meta: gold and quality of each side."""
    n = len(_indices(split, n))
    pairs = per_post * (per_post - 1) // 2
    out = []
    for i in _indices(split, -(-n // pairs)):
        out += post_comparisons(seed, i, per_post)
    return out[:n]


def _golds(c: Comparison) -> tuple[float, float]:
    if "gold_chosen" in c.meta and "gold_rejected" in c.meta:
        return c.meta["gold_chosen"], c.meta["gold_rejected"]
    return gold_score(c.post, c.chosen), gold_score(c.post, c.rejected)


def labeler_agreement(comparisons: list[Comparison], seed: int = 0) -> float:
    """How often two independent Bradley-Terry labelers (drawn with `seed`) pick the same summary."""
    rng = random.Random(f"agreement:{seed}")
    agree = 0
    for c in comparisons:
        p = p_prefer(*_golds(c))
        agree += (rng.random() < p) == (rng.random() < p)
    return agree / max(1, len(comparisons))


def expected_agreement(comparisons: list[Comparison], tau: float = TAU) -> float:
    """The exact expectation of `labeler_agreement`: mean of p^2 + (1-p)^2."""
    ps = [p_prefer(*_golds(c), tau) for c in comparisons]
    return sum(p * p + (1 - p) * (1 - p) for p in ps) / max(1, len(ps))


def noise_ceiling(comparisons: list[Comparison]) -> float:
    """Accuracy of the noiseless gold labeler (sign of g_chosen - g_rejected) on the noisy labels.

    No reward model can expect to beat it; ties count one half.
    """
    hits = 0.0
    for c in comparisons:
        ga, gb = _golds(c)
        hits += 1.0 if ga > gb else 0.5 if ga == gb else 0.0
    return hits / max(1, len(comparisons))


def tune_tau(comparisons: list[Comparison], target: float = 0.75) -> float:
    """The tau at which `expected_agreement` equals `target` (bisection; agreement falls as tau grows)."""
    lo, hi = 1e-4, 10.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if expected_agreement(comparisons, mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


# ---------------------------------------------------------------- fact swaps


@dataclass(frozen=True)
class FactSwap:
    """A faithful clean summary and the same summary with the fact of `slot` swapped: the pair differs
    in that one fact only, so a scorer that ranks `faithful` first has checked that fact against the post."""

    post: Post
    faithful: str
    swapped: str
    slot: str


def fact_swaps(split: str = "valid", n: int = 100, seed: int = 0) -> list[FactSwap]:
    """For each of the first `n` posts of `split`, one FactSwap per slot of `FACT_SLOTS` (5n in all)."""
    out = []
    for i in _indices(split, n):
        draft = make_draft(seed, i)
        rng = random.Random(f"{seed}:{i}:swap")
        parts = draw_parts(draft.facts, rng)
        faithful = render_clean(parts)
        for slot in FACT_SLOTS:
            out.append(
                FactSwap(draft.post, faithful, render_clean(swap_fact(parts, draft.facts, slot, rng)), slot)
            )
    return out


# ---------------------------------------------------------------- corpus, bench


def corpus(n: int, seed: int = 0) -> list[str]:
    """`n` prompts (format_prompt, no summary) of posts outside every split: tokenizer and LM pretraining."""
    return [make_draft(seed, CORPUS_OFFSET + i).post.prompt for i in range(n)]


def bench(n: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Seconds to generate `n` SFT examples and `n` comparisons (fresh caches: as a first call would)."""
    make_draft.cache_clear()
    t0 = time.perf_counter()
    load_sft("train", n, seed)
    t1 = time.perf_counter()
    load_comparisons("train", n, seed)
    t2 = time.perf_counter()
    return {"sft_s": t1 - t0, "comparisons_s": t2 - t1, "total_s": t2 - t0}


def _report(n: int = 20_000) -> None:
    """Print the numbers the testbed promises (timing, agreement, quality mix, lengths, vocabulary)."""
    from prefopt.data.testbed_gold import vocabulary, words

    times = bench(n)
    print(f"generation: {n} SFT in {times['sft_s']:.1f}s + {n} comparisons in {times['comparisons_s']:.1f}s")
    sft = load_sft("train", n)
    cmps = load_comparisons("train", n)
    print(
        f"TAU={TAU}: labeler agreement {labeler_agreement(cmps):.3f} (expected {expected_agreement(cmps):.3f}),"
    )
    print(f"  noise ceiling {noise_ceiling(cmps):.3f}, tau for 0.75 on these pairs {tune_tau(cmps):.4f}")
    counts, golds = Counter(e.meta["quality"] for e in sft), {}
    for e in sft:
        golds.setdefault(e.meta["quality"], []).append(e.meta["gold"])
    for q in QUALITY_MIX:
        print(f"  {q:17s} {counts[q] / n:6.1%}  mean gold {sum(golds[q]) / len(golds[q]):.3f}")
    refs = [e.meta["gold"] for e in sft]
    m = min(n, 2000)
    cleans = [gold_score(e.post, clean_summary(e.post)) for e in sft[:m]]
    print(
        f"references mean gold {sum(refs) / n:.3f}; clean_summary mean gold {sum(cleans) / len(cleans):.3f}"
    )
    no_q = sum(not score_facts(facts_of(e.post), e.summary).covered["question"] for e in sft[:m]) / m
    print(f"references without the question: {no_q:.1%}")
    post_w = sorted(len(e.post.body.split()) for e in sft)
    sum_w = sorted(len(e.summary.split()) for e in sft)
    for name, ws in (("post body", post_w), ("reference", sum_w)):
        print(f"{name} words: min {ws[0]} median {ws[n // 2]} p95 {ws[int(n * 0.95)]} max {ws[-1]}")
    seen = Counter(w for e in sft for w in words(e.post.title + " " + e.post.body + " " + e.summary))
    print(f"vocabulary: {len(seen)} distinct words in the data ({len(vocabulary())} the templates can write)")


if __name__ == "__main__":
    _report()
