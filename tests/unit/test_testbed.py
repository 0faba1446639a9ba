"""The embedded testbed: deterministic data, a sound gold labeler, human-like label noise."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from prefopt.data import testbed as tb
from prefopt.data.testbed_gold import (
    SLOTS,
    WRONG_AGE_PENALTY,
    WRONG_SLOT_PENALTY,
    Facts,
    cue_index,
    mentioned,
    noise_cues,
    score_facts,
    vocabulary,
    words,
)
from prefopt.data.testbed_text import EVENTS, FEELINGS, QUESTIONS, RELATIONS
from prefopt.data.testbed_writers import DEGRADED, FACT_SLOTS, QUALITY_MIX, draw_parts, render
from prefopt.data.types import Post

FACTS = Facts("boyfriend", 24, "m", 22, "f", "birthday", "hurt", "confront", "relationships")


@pytest.fixture(scope="module")
def comparisons():
    return tb.load_comparisons("valid", 2000)


@pytest.fixture(scope="module")
def sft():
    return tb.load_sft("train", 2000)


# ------------------------------------------------------------------ gold labeler


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        # all facts, 16 words: coverage 1
        ("my boyfriend (24m) forgot my birthday. i (22f) feel hurt. should i confront him about it?", 1.0),
        # no question (-0.30), 10 words (2 short: -0.06)
        ("my boyfriend (24m) forgot my birthday. i (22f) feel hurt.", 0.64),
        # wrong feeling: not covered (-0.15) and wrong (-0.30)
        ("my boyfriend (24m) forgot my birthday. i (22f) feel angry. should i confront him about it?", 0.55),
        # wrong age: tag not covered (-0.05), wrong age (-0.10); "(24 m)" style would count
        ("my boyfriend (29m) forgot my birthday. i (22 f) feel hurt. should i confront him about it?", 0.85),
        # preamble cue "mobile" (-0.15), detail cue "dog" (-0.08), 24 words
        (
            "on mobile, sorry. my bf (24m) forgot my birthday and i (22f) feel hurt. we have a dog. "
            "should i confront him about it?",
            0.77,
        ),
        ("", -0.36),  # 12 words short
        ("hurt hurt hurt hurt", 0.15 - 0.24 - 0.60),  # feeling, 8 short, repeat capped
        ("xq zzv blorp", -0.27 - 0.50),  # 9 short, all out of vocabulary
    ],
)
def test_gold_score_hand_worked(summary, expected):
    assert score_facts(FACTS, summary).score == pytest.approx(expected, abs=1e-9)


def test_gold_ranks_clean_above_each_degraded_variant():
    wins, total = Counter(), Counter()
    for i in range(400):
        draft, rng = tb.make_draft(3, i), random.Random(i)
        parts = draw_parts(draft.facts, rng)
        clean = score_facts(draft.facts, render(parts, draft.facts, "clean", rng)).score
        for q in DEGRADED:
            degraded = render(parts, draft.facts, q, rng, draft.preamble, draft.details)
            wins[q] += clean > score_facts(draft.facts, degraded).score
            total[q] += 1
    for q in DEGRADED:
        assert wins[q] / total[q] >= 0.95, (q, wins[q] / total[q])


def test_clean_summary_is_the_upper_anchor(sft):
    for e in sft[:300]:
        clean = tb.clean_summary(e.post)
        assert tb.gold_score(e.post, clean) == 1.0
        assert 12 <= len(words(clean)) <= 30
        assert tb.gold_score(e.post, e.summary) == e.meta["gold"] <= 1.0


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   ",
        "\x00\n\t",
        "🙂" * 1000,
        "a" * 200_000,
        "TL;DR: ???!!!",
        "999999m 12f 0m (3 f)",
        "the " * 50_000,
    ],
)
def test_gold_score_is_robust_to_junk(junk):
    post = tb.make_draft(0, 1).post
    g = tb.gold_score(post, junk)
    assert isinstance(g, float) and math.isfinite(g) and -1.0 <= g <= 1.0
    assert g < 0.2


def test_gold_penalises_degenerate_copies():
    draft = tb.make_draft(0, 2)
    clean = tb.clean_summary(draft.post)
    assert tb.gold_score(draft.post, " ".join([clean] * 4)) < 0.5  # loop of a good summary
    assert tb.gold_score(draft.post, draft.post.body) < 0.5  # copying the whole post


# ------------------------------------------------------------------ keyword soundness


def test_posts_mention_exactly_their_own_facts():
    """No cue of another slot value leaks into a post (the prototype's keyword-collision bug)."""
    for i in range(1000):
        draft = tb.make_draft(0, i)
        found = mentioned(set(words(draft.post.body)))
        assert found == {s: {draft.facts.value(s)} for s in SLOTS}, (draft.post.id, found)
        in_title = mentioned(set(words(draft.post.title)))
        assert all(in_title[s] <= {draft.facts.value(s)} for s in SLOTS)


def test_noise_cues_do_not_collide_with_fact_phrasings():
    detail, preamble = noise_cues()
    fact_cue_words = {w for entries in cue_index().values() for _, _, cue in entries for w in cue}
    assert not (detail & fact_cue_words) and not (preamble & fact_cue_words) and not (detail & preamble)
    phrasings = [p for e in EVENTS.values() for p in e.post + e.summary]
    phrasings += [p for q in QUESTIONS.values() for p in q.phrasings]
    phrasings += [w for ws in FEELINGS.values() for w in ws] + [
        w for r in RELATIONS.values() for w in r.words
    ]
    for text in phrasings:
        assert not set(words(text)) & (detail | preamble), text


def test_every_written_word_is_in_the_vocabulary_and_the_corpus(sft):
    vocab = vocabulary()
    corpus_words = {w for text in tb.corpus(2000) for w in words(text)}
    for e in sft[:500]:
        for w in words(e.post.title + " " + e.post.body + " " + e.summary):
            assert w in vocab or w[0].isdigit(), w
        for w in words(e.summary):  # a tokenizer trained on corpus() knows the summaries' words
            assert w in corpus_words or w[0].isdigit(), w
    assert 300 < len(vocab) < 5000


# ------------------------------------------------------------------ references


def test_reference_mix_leaves_room_above_it(sft):
    counts = Counter(e.meta["quality"] for e in sft)
    for q, share in QUALITY_MIX.items():
        assert abs(counts[q] / len(sft) - share) < 0.03, q
    no_question = [not score_facts(tb.facts_of(e.post), e.summary).covered["question"] for e in sft]
    assert sum(no_question) / len(sft) > 0.5  # the most common habit is flawed
    mean = {q: sum(e.meta["gold"] for e in sft if e.meta["quality"] == q) / counts[q] for q in QUALITY_MIX}
    assert mean["clean"] == 1.0
    assert all(mean[q] < 0.8 for q in DEGRADED)
    assert sum(e.meta["gold"] for e in sft) / len(sft) < 0.75


def test_lengths_fit_the_budgets(sft):
    for e in sft:
        assert 1 <= len(e.summary.split()) <= 40
        assert 50 <= len(e.post.body.split()) <= 200
        assert e.prompt.startswith(f"SUBREDDIT: r/{e.post.subreddit}\n\nTITLE: ") and e.prompt.endswith(
            "TL;DR:"
        )


# ------------------------------------------------------------------ comparisons


def test_two_labelers_agree_like_humans(comparisons):
    assert abs(tb.expected_agreement(comparisons) - 0.75) <= 0.03
    assert abs(tb.labeler_agreement(comparisons, seed=0) - 0.75) <= 0.05
    assert abs(tb.labeler_agreement(comparisons, seed=1) - 0.75) <= 0.05


def test_labels_follow_bradley_terry_on_gold(comparisons):
    """noise_ceiling = accuracy of sign(g_chosen - g_rejected); its expectation is mean max(p, 1 - p)."""
    expected = 0.0
    for c in comparisons:
        assert c.chosen != c.rejected and c.meta["quality_chosen"] != c.meta["quality_rejected"]
        assert c.meta["gold_chosen"] == tb.gold_score(c.post, c.chosen)
        assert c.meta["gold_rejected"] == tb.gold_score(c.post, c.rejected)
        p = 1 / (1 + math.exp(-(c.meta["gold_chosen"] - c.meta["gold_rejected"]) / tb.TAU))
        expected += max(p, 1 - p) / len(comparisons)
    ceiling = tb.noise_ceiling(comparisons)
    assert abs(ceiling - expected) < 0.03
    assert 0.78 < ceiling < 0.9
    stripped = [type(c)(c.post, c.chosen, c.rejected) for c in comparisons[:200]]  # no meta: recomputed
    assert tb.noise_ceiling(stripped) == tb.noise_ceiling(comparisons[:200])


# ------------------------------------------------------------------ determinism, ids, splits


def _digest(seed: int) -> str:
    rows = [
        [e.post.id, e.post.title, e.post.body, e.summary, e.meta] for e in tb.load_sft("valid", 200, seed)
    ]
    rows += [[c.post.id, c.chosen, c.rejected, c.meta] for c in tb.load_comparisons("valid", 200, seed)]
    rows += tb.corpus(50, seed)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_same_seed_same_bytes_across_processes():
    here = _digest(0)
    code = "from test_testbed import _digest; print(_digest(0))"  # set order changes with the hash seed
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    test_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=test_dir, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here
    assert _digest(1) != here


def test_posts_are_distinct_and_random_access():
    posts = [tb.make_draft(0, i).post for i in range(1000)]
    assert len({(p.title, p.body) for p in posts}) >= 990
    tb.make_draft.cache_clear()
    assert tb.make_draft(0, 537).post == posts[537]  # regenerated alone, no earlier post needed


def test_splits_are_disjoint():
    splits = {s: tb.load_sft(s, 500) for s in ("train", "valid", "test")}
    corpus = set(tb.corpus(500))
    ids = {s: {e.post.id for e in ex} for s, ex in splits.items()}
    bodies = {s: {e.post.prompt for e in ex} for s, ex in splits.items()}
    assert (
        not (ids["train"] & ids["valid"])
        and not (ids["train"] & ids["test"])
        and not (ids["valid"] & ids["test"])
    )
    assert not (bodies["train"] & bodies["test"]) and not (bodies["valid"] & bodies["test"])
    assert not corpus & (bodies["train"] | bodies["valid"] | bodies["test"])
    assert {c.post.id for c in tb.load_comparisons("test", 500)} == ids["test"]


def test_facts_come_from_the_id_alone():
    draft = tb.make_draft(4, 77)
    truncated = Post(draft.post.subreddit, draft.post.title, draft.post.body[:40], draft.post.id)
    assert tb.is_testbed_post(truncated) and tb.facts_of(truncated) == draft.facts
    assert tb.gold_score(truncated, tb.clean_summary(draft.post)) == 1.0
    alien = Post("relationships", "t", "b", id="t3_abc")
    assert not tb.is_testbed_post(alien) and not tb.is_testbed_post(Post("r", "t", "b"))
    with pytest.raises(ValueError, match="not a testbed post"):
        tb.gold_score(alien, "x")
    assert tb.load_sft("validation", 3) == tb.load_sft("valid", 3)
    with pytest.raises(ValueError, match="unknown split"):
        tb.load_sft("dev")


def test_report_runs(capsys):
    tb._report(300)  # the timing of 20k is printed by `python -m prefopt.data.testbed`, not asserted
    out = capsys.readouterr().out
    assert "labeler agreement" in out and "noise ceiling" in out and "vocabulary" in out


def test_feeling_and_question_follow_the_event_at_the_stated_rate(sft):
    """A post keeps its event's usual (feeling, question) with P = TYPICAL_SHARE, else draws uniformly."""
    from prefopt.data.testbed_text import EVENTS, FEELINGS, QUESTIONS, TYPICAL

    facts = [tb.facts_of(e.post) for e in sft]
    typical_feel = sum(f.feeling == TYPICAL[f.event][0] for f in facts) / len(facts)
    typical_q = sum(f.question == TYPICAL[f.event][1] for f in facts) / len(facts)
    share = tb.TYPICAL_SHARE
    assert typical_feel == pytest.approx(share + (1 - share) / len(FEELINGS), abs=0.02)
    assert typical_q == pytest.approx(share + (1 - share) / len(QUESTIONS), abs=0.02)
    assert set(TYPICAL) == set(EVENTS)  # every event has its pair


def test_fact_swaps_differ_from_the_faithful_summary_in_exactly_one_fact():
    swaps = tb.fact_swaps("valid", 30)
    assert [s.slot for s in swaps[:5]] == list(FACT_SLOTS) and len(swaps) == 150
    for s in swaps:
        good, bad = tb.gold_breakdown(s.post, s.faithful), tb.gold_breakdown(s.post, s.swapped)
        assert good.wrong_slots == () and good.penalties["wrong"] == 0 and good.coverage == 1.0
        # an age: the other's tag off by a few years (wrong, unless it lands on the writer's own tag)
        if s.slot == "age":
            assert bad.wrong_slots == () and bad.penalties["wrong"] in (0.0, pytest.approx(WRONG_AGE_PENALTY))
        else:
            assert bad.wrong_slots == (s.slot,) and bad.penalties["wrong"] == pytest.approx(
                WRONG_SLOT_PENALTY
            )
        assert bad.score < good.score
        a, b = words(s.faithful), words(s.swapped)
        if s.slot in ("feeling", "age"):  # one-word values: the texts differ in that word only
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
        else:
            assert a != b


def test_several_summaries_per_post_give_every_pair_labelled_apart():
    """k writers of k different qualities per post and all k(k-1)/2 pairs among them, as in OpenAI's data;
    k = 2 is the one-comparison-per-post world."""
    k4 = tb.post_comparisons(0, 10_000_005, 4)
    assert len(k4) == 6 and len({c.post.id for c in k4}) == 1
    texts = {t for c in k4 for t in (c.chosen, c.rejected)}
    qualities = {q for c in k4 for q in (c.meta["quality_chosen"], c.meta["quality_rejected"])}
    assert len(texts) == 4 and len(qualities) == 4
    for c in k4:
        assert c.meta["gold_chosen"] == tb.gold_score(c.post, c.chosen)
    rows = tb.load_comparisons("valid", 20, per_post=4)  # 4 posts' 6 comparisons, cut to 20
    assert (
        len(rows) == 20
        and [c.post.id for c in rows[:6]] == [k4[0].post.id.replace("10000005", "10000000")] * 6
    )
    assert rows[6:12] == tb.post_comparisons(0, 10_000_001, 4)
    assert tb.load_comparisons("valid", 5, per_post=2) == [
        tb.post_comparisons(0, 10_000_000 + i, 2)[0] for i in range(5)
    ]
    with pytest.raises(ValueError, match="summaries per post"):
        tb.post_comparisons(0, 0, 8)


def test_comparisons_of_several_summaries_keep_the_noise_level():
    """The labels of a k = 4 world are as noisy as the k = 2 world's (about human agreement)."""
    rows = tb.load_comparisons("valid", 3000, per_post=4)
    assert abs(tb.expected_agreement(rows) - 0.75) <= 0.03
    assert 0.78 < tb.noise_ceiling(rows) < 0.9
