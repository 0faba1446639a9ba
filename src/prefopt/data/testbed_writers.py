"""Reference summaries of mixed quality, as human TL;DRs are.

A writer draws the parts of a summary (who, the event, the feeling, the question, a shape) and renders
them; a quality other than "clean" changes the parts before rendering. Because `render` takes the parts,
a clean summary and its degraded variants can be made from the *same* parts (the gold-ranking test).

The mix leaves the references' most common habit flawed: the question is left out of about 60% of
them, so a model trained on them by SFT has room above them that RLHF can find.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from prefopt.data.testbed_gold import Facts
from prefopt.data.testbed_text import (
    EVENTS,
    FEELINGS,
    PREAMBLES,
    QUESTIONS,
    RAMBLE_LEADS,
    RELATIONS,
    SUMMARY_SHAPES,
    strip_marks,
)

# quality -> share of references. Non-clean qualities other than missing_question also drop the
# question half of the time (terse always), so the question is missing in ~60% of references.
QUALITY_MIX: dict[str, float] = {
    "clean": 0.20,
    "missing_question": 0.35,
    "missing_fact": 0.10,
    "rambling": 0.12,
    "preamble": 0.08,
    "wrong_fact": 0.08,
    "terse": 0.07,
}
QUALITIES = tuple(QUALITY_MIX)
DEGRADED = QUALITIES[1:]


@dataclass(frozen=True)
class Parts:
    """The pieces a summary is rendered from (pronouns already filled in)."""

    rel: str  # surface word of the relation, e.g. "bf"
    otag: str
    wtag: str
    ev: str
    feel: str
    q: str
    shape: str
    he: str
    him: str


def pronouns(gender: str) -> dict[str, str]:
    return (
        {"he": "he", "him": "him", "his": "his"}
        if gender == "m"
        else {"he": "she", "him": "her", "his": "her"}
    )


def _event_text(key: str, gender: str, rng: random.Random) -> str:
    return rng.choice(EVENTS[key].summary).format(**pronouns(gender))


def _question_text(key: str, gender: str, rng: random.Random) -> str:
    return rng.choice(QUESTIONS[key].phrasings).format(**pronouns(gender))


def draw_parts(facts: Facts, rng: random.Random) -> Parts:
    """The parts of a correct, complete summary, with paraphrases drawn at random."""
    words = RELATIONS[facts.relation].words
    rel = words[0] if len(words) == 1 or rng.random() < 0.7 else words[1]
    g = facts.other_gender
    return Parts(
        rel=rel,
        otag=facts.other_tag,
        wtag=facts.writer_tag,
        ev=_event_text(facts.event, g, rng),
        feel=rng.choice(FEELINGS[facts.feeling]),
        q=_question_text(facts.question, g, rng),
        shape=rng.choice(SUMMARY_SHAPES),
        he=pronouns(g)["he"],
        him=pronouns(g)["him"],
    )


def canonical_parts(facts: Facts) -> Parts:
    """The first phrasing of everything: the ideal summary used as an upper anchor."""
    g = facts.other_gender
    return Parts(
        rel=RELATIONS[facts.relation].words[0],
        otag=facts.other_tag,
        wtag=facts.writer_tag,
        ev=EVENTS[facts.event].summary[0].format(**pronouns(g)),
        feel=FEELINGS[facts.feeling][0],
        q=QUESTIONS[facts.question].phrasings[0].format(**pronouns(g)),
        shape=SUMMARY_SHAPES[0],
        he=pronouns(g)["he"],
        him=pronouns(g)["him"],
    )


def _tidy(text: str) -> str:
    return " ".join(text.split())


def render_clean(p: Parts, who: str | None = None, me: str | None = None) -> str:
    who = f"my {p.rel} ({p.otag})" if who is None else who
    me = f"i ({p.wtag})" if me is None else me
    return _tidy(p.shape.format(who=who, me=me, ev=p.ev, feel=p.feel, q=p.q))


def _missing_fact(p: Parts, rng: random.Random) -> str:
    dropped = rng.choice(("event", "feeling", "who"))
    if dropped == "event":
        return _tidy(f"i ({p.wtag}) feel {p.feel} about my {p.rel} ({p.otag}). {p.q}")
    if dropped == "feeling":
        return _tidy(f"my {p.rel} ({p.otag}) {p.ev}. {p.q}")
    return render_clean(p, who=p.he, me="i")


FACT_SLOTS = ("relation", "event", "feeling", "question", "age")


def swap_fact(p: Parts, facts: Facts, slot: str, rng: random.Random) -> Parts:
    """`p` with the fact of `slot` swapped for another value of its slot (an age: off by a few years)."""
    g = facts.other_gender
    if slot == "age":
        return replace(p, otag=f"{facts.other_age + rng.choice((-5, -3, 3, 5))}{g}")
    other = rng.choice([k for k in _values(slot) if k != facts.value(slot)])
    if slot == "relation":
        return replace(p, rel=RELATIONS[other].words[0])
    if slot == "event":
        return replace(p, ev=_event_text(other, g, rng))
    if slot == "feeling":
        return replace(p, feel=FEELINGS[other][0])
    return replace(p, q=_question_text(other, g, rng))


def _wrong_fact(p: Parts, facts: Facts, rng: random.Random) -> str:
    """One fact swapped for another value of its slot (or an age off by a few years)."""
    return render_clean(swap_fact(p, facts, rng.choice(FACT_SLOTS), rng))


def _values(slot: str) -> list[str]:
    return list({"relation": RELATIONS, "event": EVENTS, "feeling": FEELINGS, "question": QUESTIONS}[slot])


def _rambling(p: Parts, details: tuple[str, ...], rng: random.Random) -> str:
    """One copied irrelevant detail (two, 40% of the time, if they fit in ~32 words) before or after."""
    core, copied = render_clean(p), list(rng.sample(details, min(1 + (rng.random() < 0.4), len(details))))
    while len(copied) > 1 and len(" ".join([core, *copied]).split()) > 32:
        copied.pop()
    if rng.random() < 0.5:
        return _tidy(" ".join([rng.choice(RAMBLE_LEADS), *copied, core]))
    return _tidy(" ".join([core, *copied]))


def render(
    p: Parts,
    facts: Facts,
    quality: str,
    rng: random.Random,
    preamble: str = "",
    details: tuple[str, ...] = (),
) -> str:
    """Render parts at a quality. `preamble`/`details` are the post's own, for copying writers."""
    if quality not in QUALITY_MIX:
        raise ValueError(f"unknown quality {quality!r}; expected one of {QUALITIES}")
    if quality == "missing_question" or (quality not in ("clean", "terse") and rng.random() < 0.5):
        p = replace(p, q="")
    if quality in ("clean", "missing_question"):
        return render_clean(p)
    if quality == "missing_fact":
        return _missing_fact(p, rng)
    if quality == "rambling":
        return _rambling(p, details, rng)
    if quality == "preamble":
        pre = preamble or strip_marks(rng.choice(PREAMBLES))
        return _tidy(f"{pre} {render_clean(p)}")
    if quality == "wrong_fact":
        return _wrong_fact(p, facts, rng)
    short = RELATIONS[facts.relation].words[-1]  # terse: abbreviation, no ages, no question
    return _tidy(f"{short} {p.ev}. {p.feel}.")


def sample_quality(rng: random.Random) -> str:
    return rng.choices(QUALITIES, weights=[QUALITY_MIX[q] for q in QUALITIES])[0]
