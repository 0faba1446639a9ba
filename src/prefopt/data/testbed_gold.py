"""The testbed's gold labeler: score a summary against the facts the generator put in its post.

Scale (roughly 0..1, clipped to [-1, 1]): a complete, concise, correct summary scores 1.0; leaving
out the question costs 0.30, a wrong fact about 0.3-0.6, an empty or junk string scores below 0.

    score = coverage - wrong - length - detail - preamble - repeat - oov

* coverage (<= 1): the weight of each fact the summary mentions, found through the fact's cues
  (canonical words and paraphrases, `testbed_text`): relation 0.15, the two age tags 0.05 each,
  event 0.30, feeling 0.15, question 0.30.
* wrong (correctness): 0.30 for each slot where a *different* value is mentioned (another person,
  event, feeling or question than the post's), 0.10 per age tag that is not the writer's or the other's
  (at most 0.20).
* length (concision): 0.03 per word outside `IDEAL_WORDS` = 12..30 words (at most 0.60).
* detail (concision): 0.08 per distinct irrelevant-detail cue copied from the post (at most 0.30).
* preamble (fluency): 0.15 per distinct preamble/closing cue ("lurker", "mobile", "edit"...; <= 0.30).
* repeat (fluency): the share of repeated word trigrams plus the share of immediately repeated words
  (at most 0.60): degenerate loops score low whatever they mention.
* oov (fluency): 0.50 x the share of words the testbed never writes (garbage, other languages).

Only the first `MAX_WORDS` words are read, so any text scores in bounded time without raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from prefopt.data.testbed_text import (
    CLOSINGS,
    DETAIL_SLOTS,
    DETAILS,
    EVENTS,
    FEELINGS,
    PREAMBLES,
    QUESTIONS,
    RELATIONS,
    Cue,
    all_template_text,
    marked_words,
)

COVERAGE_WEIGHTS = {
    "relation": 0.15,
    "other_age": 0.05,
    "writer_age": 0.05,
    "event": 0.30,
    "feeling": 0.15,
    "question": 0.30,
}
WRONG_SLOT_PENALTY = 0.30
WRONG_AGE_PENALTY, WRONG_AGE_CAP = 0.10, 0.20
IDEAL_WORDS = (12, 30)
LENGTH_PENALTY_PER_WORD, LENGTH_CAP = 0.03, 0.60
DETAIL_PENALTY, DETAIL_CAP = 0.08, 0.30
PREAMBLE_PENALTY, PREAMBLE_CAP = 0.15, 0.30
REPEAT_CAP = 0.60
OOV_WEIGHT = 0.50
MAX_WORDS = 2000
SLOTS = ("relation", "event", "feeling", "question")

# An age tag "24m" / "(24 m)" is one word; otherwise words are letters or digits.
_WORD = re.compile(r"(\d{1,3})\s?([mf])\b|([a-z]+)|(\d+)")


@dataclass(frozen=True)
class Facts:
    """The key facts of one testbed post, known to its generator."""

    relation: str  # key of testbed_text.RELATIONS
    other_age: int
    other_gender: str  # "m" | "f"
    writer_age: int
    writer_gender: str
    event: str  # key of EVENTS
    feeling: str  # key of FEELINGS
    question: str  # key of QUESTIONS
    subreddit: str

    @property
    def other_tag(self) -> str:
        return f"{self.other_age}{self.other_gender}"

    @property
    def writer_tag(self) -> str:
        return f"{self.writer_age}{self.writer_gender}"

    def value(self, slot: str) -> str:
        return getattr(self, slot)


@dataclass(frozen=True)
class GoldBreakdown:
    """Every term of the gold score, for reports (e.g. the SFT stage's fact accuracy)."""

    score: float
    coverage: float
    covered: dict[str, bool] = field(default_factory=dict)
    wrong_slots: tuple[str, ...] = ()
    penalties: dict[str, float] = field(default_factory=dict)
    n_words: int = 0


def words(text: str) -> list[str]:
    """Lowercased words of `text` as the labeler reads them (age tags kept whole: "24m")."""
    out = []
    for m in _WORD.finditer(text.lower()):
        out.append(m.group(1) + m.group(2) if m.group(1) else m.group(0))
        if len(out) >= MAX_WORDS:
            break
    return out


def _slot_cues() -> list[tuple[str, str, Cue]]:
    cues = [("relation", k, c) for k, r in RELATIONS.items() for c in r.cues]
    cues += [("event", k, c) for k, e in EVENTS.items() for c in e.cues]
    cues += [("feeling", k, (w,)) for k, ws in FEELINGS.items() for w in ws]
    cues += [("question", k, c) for k, q in QUESTIONS.items() for c in q.cues]
    return cues


@lru_cache(maxsize=1)
def cue_index() -> dict[str, list[tuple[str, str, Cue]]]:
    """first word of a cue -> (slot, value, cue): lets matching look only at the words present."""
    index: dict[str, list[tuple[str, str, Cue]]] = {}
    for slot, key, cue in _slot_cues():
        index.setdefault(cue[0], []).append((slot, key, cue))
    return index


@lru_cache(maxsize=1)
def noise_cues() -> tuple[frozenset[str], frozenset[str]]:
    """(irrelevant-detail cue words, preamble/closing cue words)."""
    detail = set(marked_words(DETAILS)) | {v for vs in DETAIL_SLOTS.values() for v in vs}
    return frozenset(detail), frozenset(marked_words(PREAMBLES + CLOSINGS))


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every word the testbed generator can write (age tags and numbers are always known)."""
    return frozenset(w for text in all_template_text() for w in words(text))


def mentioned(tokens: set[str]) -> dict[str, set[str]]:
    """slot -> the slot values whose cue is fully present among `tokens`."""
    found: dict[str, set[str]] = {s: set() for s in SLOTS}
    index = cue_index()
    for tok in tokens:
        for slot, key, cue in index.get(tok, ()):
            if all(w in tokens for w in cue[1:]):
                found[slot].add(key)
    return found


def _repeat_share(toks: list[str]) -> float:
    """Share of repeated trigrams + share of words equal to their predecessor."""
    tri = list(zip(toks, toks[1:], toks[2:], strict=False))
    rep_tri = 1.0 - len(set(tri)) / len(tri) if tri else 0.0
    dup = sum(a == b for a, b in zip(toks, toks[1:], strict=False)) / max(1, len(toks) - 1)
    return rep_tri + dup


def _length_penalty(n: int) -> float:
    lo, hi = IDEAL_WORDS
    over = max(0, lo - n) + max(0, n - hi)
    return min(LENGTH_CAP, LENGTH_PENALTY_PER_WORD * over)


def score_facts(facts: Facts, summary: str) -> GoldBreakdown:
    """Gold score of `summary` for a post with `facts` (see the module docstring for the terms)."""
    toks = words(summary if isinstance(summary, str) else "")
    tokset = set(toks)
    found = mentioned(tokset)
    tags = {t for t in tokset if t[-1] in "mf" and t[0].isdigit()}
    covered = {s: facts.value(s) in found[s] for s in SLOTS}
    covered["other_age"] = facts.other_tag in tags
    covered["writer_age"] = facts.writer_tag in tags
    coverage = sum(COVERAGE_WEIGHTS[k] for k, hit in covered.items() if hit)
    wrong_slots = tuple(s for s in SLOTS if found[s] - {facts.value(s)})
    n_wrong_ages = len(tags - {facts.other_tag, facts.writer_tag})
    detail_cues, preamble_cues = noise_cues()
    vocab = vocabulary()
    oov = sum(not (t in vocab or t[0].isdigit()) for t in toks) / max(1, len(toks))
    pens = {
        "wrong": WRONG_SLOT_PENALTY * len(wrong_slots) + min(WRONG_AGE_CAP, WRONG_AGE_PENALTY * n_wrong_ages),
        "length": _length_penalty(len(toks)),
        "detail": min(DETAIL_CAP, DETAIL_PENALTY * len(tokset & detail_cues)),
        "preamble": min(PREAMBLE_CAP, PREAMBLE_PENALTY * len(tokset & preamble_cues)),
        "repeat": min(REPEAT_CAP, _repeat_share(toks)),
        "oov": OOV_WEIGHT * oov,
    }
    score = max(-1.0, min(1.0, coverage - sum(pens.values())))
    return GoldBreakdown(round(score, 6), round(coverage, 6), covered, wrong_slots, pens, len(toks))
