"""TL;DR prompt parsing, schema normalisers and smart truncation (prefopt.data.tldr)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from prefopt.data import tldr
from prefopt.data.types import Comparison, Post, SFTExample, format_prompt

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TLDR = SHARED / "tldr"
NO_FILL: dict[str, str] = {}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (the shared/ folder beside the repo root)")
    return path


# ---------------------------------------------------------------------------------------- parsing


def test_parse_prompt_both_styles_hand_example():
    openai = "SUBREDDIT: r/cats\n\nTITLE: Help\n\nPOST: Line one.\n\nTITLE: quoted\nPOST: text\n\nTL;DR:"
    carper = "SUBREDDIT: r/cats\nTITLE: Help\nPOST: Line one.\n\nTITLE: quoted\nPOST: text\nTL;DR: "
    expected = Post("cats", "Help", "Line one.\n\nTITLE: quoted\nPOST: text")
    assert tldr.prompt_style(openai) == "openai" and tldr.prompt_style(carper) == "carperai"
    assert tldr.parse_prompt(openai) == expected
    assert tldr.parse_prompt(carper) == expected
    # CarperAI comparisons have no TL;DR line at all
    assert tldr.parse_prompt("SUBREDDIT: r/cats\nTITLE: Help\nPOST: Line one.") == Post(
        "cats", "Help", "Line one."
    )


def test_parse_prompt_title_with_newline_and_doubled_r():
    # both quirks occur in OpenAI's real validation comparisons
    prompt = "SUBREDDIT: r/r/loseit\n\nTITLE: Lose weight? ):\n(Back injury) M/24\n\nPOST: Body.\n\nTL;DR:"
    post = tldr.parse_prompt(prompt)
    assert post == Post("r/loseit", "Lose weight? ):\n(Back injury) M/24", "Body.")
    assert post.prompt == prompt


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("TITLE: t\n\nPOST: p\n\nTL;DR:", "SUBREDDIT"),
        ("SUBREDDIT: r/x\n\nPOST: p\n\nTL;DR:", "TITLE"),
        ("SUBREDDIT: r/x\n\nTITLE: t\n\nBODY: p", "POST"),
    ],
)
def test_parse_prompt_rejects_other_text(prompt, message):
    with pytest.raises(ValueError, match=message):
        tldr.parse_prompt(prompt)


def test_prompt_round_trip_on_every_real_prompt():
    rows = [json.loads(line) for line in _need(TLDR / "tldr_valid_1945.trl_prompt_completion.jsonl").open()]
    parts = [
        json.loads(line) for line in (TLDR / "tldr_valid_1945.subreddit_title_post_summary.jsonl").open()
    ]
    for row, part in zip(rows, parts, strict=True):
        post = tldr.parse_prompt(row["prompt"])
        assert (post.subreddit, post.title, post.body) == (part["subreddit"], part["title"], part["post"])
        assert post.prompt == row["prompt"]


# ---------------------------------------------------------------------------------------- normalisers


def test_sft_layouts_of_one_post_normalise_equal():
    sub, title, body, summary = "AskReddit", "A title", "Para one.\n\nPara two?", "short summary"
    rows = {
        "tldr_3_filtered": {"subreddit": sub, "title": title, "post": body, "summary": " " + summary},
        "trl": {"prompt": format_prompt(sub, title, body), "completion": " " + summary},
        "carperai": {
            "prompt": f"SUBREDDIT: r/{sub}\nTITLE: {title}\nPOST: {body}\nTL;DR: ",
            "label": summary,
        },
    }
    expected = SFTExample(Post(sub, title, body), summary)
    for name, row in rows.items():
        example = tldr.LAYOUTS["sft"][name].normalise(row, NO_FILL)
        assert example == expected, name
        assert example.completion == " short summary"


def test_openai_raw_readme_example_choice_and_confidence():
    row = json.loads(_need(TLDR / "openai_comparisons_readme_example.openai_raw_schema.jsonl").read_text())
    c = tldr.comparison_from_openai_raw(row, NO_FILL)
    assert row["choice"] == 1
    assert c.chosen == row["summaries"][1]["text"][1:] and c.chosen.startswith("we suspect other party")
    assert c.rejected == row["summaries"][0]["text"][1:] and c.rejected.startswith("car accident caused")
    assert c.confidence == 8
    assert c.meta["policies"] == ("ref", "sup4_ppo_rm3_kl10")
    assert (c.post.subreddit, c.post.id) == ("legaladvice", "t3_2vwp1w")
    assert c.post.title == "Anybody with knowledge of the Dutch law around ? car accident questions."


def _raw(**changes):
    row = {
        "info": {"id": "t3_a", "post": "Body.", "title": None, "subreddit": None},
        "summaries": [
            {"text": " one", "policy": None, "note": None},
            {"text": " two ", "policy": None, "note": None},
        ],
        "choice": 0,
        "worker": "w",
        "batch": None,
        "split": None,
        "extra": {},
    }
    row.update(changes)
    return row


def test_openai_raw_null_title_and_subreddit_is_an_error_that_says_how_to_opt_in():
    with pytest.raises(tldr.RowError) as info:
        tldr.comparison_from_openai_raw(_raw(), NO_FILL)
    assert info.value.field == "info.subreddit"
    for needle in ("info.subreddit", "info.title", "fill_missing", "'title': ''"):
        assert needle in str(info.value)
    c = tldr.comparison_from_openai_raw(_raw(), {"subreddit": "unknown", "title": ""})
    assert c == Comparison(Post("unknown", "", "Body.", "t3_a"), "one", "two")
    assert c.confidence is None and c.meta["filled"] == ["subreddit", "title"]
    assert c.prompt.startswith("SUBREDDIT: r/unknown\n\nTITLE: \n\nPOST: Body.")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"choice": 2}, "choice"),
        ({"choice": True}, "choice"),
        ({"summaries": [{"text": " one"}]}, "summaries"),
        ({"summaries": [{"text": " one"}, {"text": "  "}]}, "summaries[1].text"),
        ({"extra": {"confidence": "high"}}, "extra.confidence"),
        ({"info": "not an object"}, "info"),
    ],
)
def test_openai_raw_bad_fields_are_named(changes, field):
    fill = {"subreddit": "s", "title": "t"}
    with pytest.raises(tldr.RowError) as info:
        tldr.comparison_from_openai_raw(_raw(**changes), fill)
    assert info.value.field == field


def test_openai_raw_cnn_dm_row_is_skipped_not_bad():
    row = _raw(
        info={"id": "x", "post": None, "title": "t", "subreddit": None, "article": "CNN text", "site": "cnn"}
    )
    with pytest.raises(tldr.SkipRow):
        tldr.comparison_from_openai_raw(row, NO_FILL)


def test_carperai_comparisons_lose_tldr_prefix():
    row = {
        "prompt": "SUBREDDIT: r/a\nTITLE: b\nPOST: c",
        "chosen": "TL;DR: good one",
        "rejected": "TL;DR:  bad",
    }
    assert tldr.comparison_from_carperai(row, NO_FILL) == Comparison(Post("a", "b", "c"), "good one", "bad")
    with pytest.raises(tldr.RowError, match="chosen"):
        tldr.comparison_from_carperai({**row, "chosen": "TL;DR: "}, NO_FILL)


@pytest.mark.parametrize(
    "value, problem",
    [(None, "null"), (3, "expected text, got int"), ("  \n", "empty text"), ("a\ud800", "not valid UTF-8")],
)
def test_text_field_problems(value, problem):
    with pytest.raises(tldr.RowError, match=problem) as info:
        tldr.text_field({"summary": value}, "summary")
    assert info.value.field == "summary"
    with pytest.raises(tldr.RowError, match="missing"):
        tldr.text_field({}, "summary")


def test_detect_layout_from_columns():
    assert (
        tldr.detect_layout("sft", ["id", "subreddit", "title", "post", "summary", "query_token"])
        == "tldr_3_filtered"
    )
    assert tldr.detect_layout("sft", ["prompt", "label"]) == "carperai"
    assert tldr.detect_layout("sft", ["prompt", "completion"]) == "trl"
    assert tldr.detect_layout("sft", ["prompt", "chosen", "rejected"]) is None
    raw = ["info", "summaries", "choice", "worker", "batch", "split", "extra"]
    assert tldr.detect_layout("comparison", raw) == "openai_raw"
    cols = ["prompt", "chosen", "rejected"]
    assert tldr.detect_layout("comparison", cols, {"prompt": "SUBREDDIT: r/a\n\nTITLE: b"}) == "trl"
    assert tldr.detect_layout("comparison", cols, {"prompt": "SUBREDDIT: r/a\nTITLE: b"}) == "carperai"
    assert tldr.detect_layout("rating", ["id", "summary_id", "text", "worker", "axes"]) == "openai_axis"


# ---------------------------------------------------------------------------------------- truncation


def test_cut_lengths_hand_example():
    body = "Hi there. How are you?\nSecond line.\n\nThird para here."
    # newline cuts (longest first), then sentence ends of the first line, then words of its first sentence
    assert tldr.cut_lengths(body) == [len("Hi there. How are you?\nSecond line."), 22, 9, 2]
    assert tldr.cut_lengths('He said "no." Then left! ok') == [len('He said "no." Then left!'), 13, 7, 2]
    assert tldr.cut_lengths("v3.5 is out") == [7, 4]  # no sentence end inside "3.5"


def test_first_true_matches_brute_force():
    calls = []
    for n in range(0, 12):
        for flip in range(0, n + 1):
            for guess in range(-1, n + 2):

                def pred(i, flip=flip):
                    calls.append(i)
                    return i >= flip

                assert tldr._first_true(pred, n, guess) == flip
    assert all(i >= 0 for i in calls)


class CharTokenizer:
    """One token per character, plus a BOS: hand-checkable budgets. `is_fast` toggles offsets."""

    def __init__(self, is_fast: bool = True):
        self.is_fast = is_fast

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        assert add_special_tokens
        out = {"input_ids": [0] + [ord(ch) for ch in text]}
        if return_offsets_mapping:
            assert self.is_fast
            out["offset_mapping"] = [(0, 0)] + [(i, i + 1) for i in range(len(text))]
        return out


@pytest.mark.parametrize("is_fast", [True, False])
def test_truncate_post_hand_example(is_fast):
    post = Post("a", "b", "One two. Three four.\nFive six.\n\nSeven eight nine.")
    tok = CharTokenizer(is_fast)
    head = len(format_prompt("a", "b", "")) + 1  # characters of an empty-body prompt, plus BOS
    assert tldr.build_prompt(post, tok, head + len(post.body)) == post.prompt
    budgets = {
        head + len(post.body) - 1: "One two. Three four.\nFive six.",
        head + len("One two. Three four.\nFive six."): "One two. Three four.\nFive six.",
        head + len("One two. Three four.\nFive six.") - 1: "One two. Three four.",
        head + 19: "One two.",  # no newline left: the last sentence end that fits
        head + 7: "One",  # no sentence end left: a word boundary
    }
    for budget, body in budgets.items():
        assert tldr.truncate_post(post, tok, budget) == Post("a", "b", body), budget
    with pytest.raises(ValueError, match="no cut of the body fits"):
        tldr.build_prompt(post, tok, head + 2)


@pytest.fixture(scope="module")
def qwen():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(_need(SHARED / "qwen-tokenizer")))


@pytest.fixture(scope="module")
def posts():
    path = _need(TLDR / "tldr_valid_1945.subreddit_title_post_summary.jsonl")
    rows = [json.loads(line) for line in path.open()]
    return [Post(r["subreddit"], r["title"], r["post"]) for r in rows]


def _n_tokens(tok, text: str) -> int:
    return len(tok(text)["input_ids"])


_END = re.compile(r"[.!?]+['\")\]]*$")


def _check_cut(tok, post: Post, cut: Post, budget: int) -> str:
    """Independent check of one truncation; returns where it cut."""
    assert (cut.subreddit, cut.title, cut.id) == (post.subreddit, post.title, post.id)
    assert post.body.startswith(cut.body) and cut.body
    assert _n_tokens(tok, cut.prompt) <= budget
    if cut.body == post.body:
        return "none"
    gap = post.body[len(cut.body) :]
    assert gap[0].isspace(), "a cut never splits a word"
    if "\n" in gap[: len(gap) - len(gap.lstrip())]:
        return "newline"
    assert "\n" not in cut.body, "sentence and word cuts only happen within the first line"
    if _END.search(cut.body):
        return "sentence"
    # last resort: even the first sentence of the first line does not fit
    first_line = post.body.split("\n")[0]
    m = re.search(r"[.!?]+['\")\]]*(?=\s)", first_line)
    first_sentence = first_line[: m.end()] if m else first_line
    assert _n_tokens(tok, format_prompt(post.subreddit, post.title, first_sentence)) > budget
    return "word"


def test_every_real_prompt_fits_512_after_truncation(qwen, posts):
    cuts = [tldr.truncate_post(p, qwen, 512) for p in posts]
    kinds = [_check_cut(qwen, p, c, 512) for p, c in zip(posts, cuts, strict=True)]
    # the Qwen tokenizer makes one post longer than OpenAI's 512 GPT-2 tokens
    assert kinds.count("none") == len(posts) - 1 and kinds.count("newline") == 1
    assert [tldr.build_prompt(p, qwen) for p in posts[:200]] == [c.prompt for c in cuts[:200]]


def test_small_budget_forces_many_cuts_on_newlines_and_sentence_ends(qwen, posts):
    kinds = [_check_cut(qwen, p, tldr.truncate_post(p, qwen, 128), 128) for p in posts]
    assert kinds.count("none") == sum(_n_tokens(qwen, p.prompt) <= 128 for p in posts) == 3
    assert kinds.count("newline") > 1000 and kinds.count("sentence") > 500
    assert kinds.count("word") < 20  # only posts whose first sentence alone is too long


def _reference_truncate(tok, post: Post, budget: int) -> str:
    """The literal rule: cut at the last newline, else the last sentence end, else the last word."""
    body = post.body
    while _n_tokens(tok, format_prompt(post.subreddit, post.title, body)) > budget:
        if "\n" in body:
            body = body[: body.rindex("\n")].rstrip()
            continue
        ends = [m.end() for m in re.finditer(r"[.!?]+['\")\]]*(?=\s)", body)]
        body = body[: ends[-1]] if ends else body[: body.rindex(" ")].rstrip()
    return body


def test_truncation_equals_literal_cut_loop(qwen, posts):
    rng = random.Random(0)
    for post in rng.sample(posts, 300):
        budget = rng.choice([96, 128, 200, 300])
        assert tldr.truncate_post(post, qwen, budget).body == _reference_truncate(qwen, post, budget)
