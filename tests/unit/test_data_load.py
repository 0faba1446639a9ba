"""Loading TL;DR data from files, folders, the Hub and the testbed (prefopt.data.load)."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from prefopt.data import load, testbed
from prefopt.data.load import BadRowsWarning, DataError
from prefopt.data.types import Comparison, Post, SFTExample

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TLDR = SHARED / "tldr"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SFT_FILES = {
    "tldr_3_filtered": "tldr_valid_1945.subreddit_title_post_summary",
    "trl": "tldr_valid_1945.trl_prompt_completion",
    "carperai": "tldr_valid_1945.carperai_prompt_label",
}
PREF_10K = "openai_comparisons_valid_last10k.trl_tldr_preference_prompt_chosen_rejected.jsonl"
RAW_727 = "openai_comparisons_valid_overlap727.openai_raw_schema.jsonl"
FILL = {"subreddit": "", "title": ""}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (the shared/ folder beside the repo root)")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


@pytest.fixture(scope="module")
def comparisons_10k() -> list[Comparison]:
    return load.load_comparisons(str(_need(TLDR / PREF_10K)))


@pytest.fixture(scope="module")
def sft_by_layout() -> dict[str, list[SFTExample]]:
    return {name: load.load_sft(str(_need(TLDR / f"{stem}.jsonl"))) for name, stem in SFT_FILES.items()}


# ---------------------------------------------------------------------------------------- real files


def test_all_10k_comparisons_load(comparisons_10k):
    rows = _rows(TLDR / PREF_10K)
    assert len(comparisons_10k) == len(rows) == 10_000
    assert len({c.post for c in comparisons_10k}) == 1_653  # as the data README says
    for c, row in zip(comparisons_10k, rows, strict=True):
        assert (c.prompt, " " + c.chosen, " " + c.rejected) == (row["prompt"], row["chosen"], row["rejected"])
    assert {c.meta["layout"] for c in comparisons_10k} == {"trl"}
    assert comparisons_10k[41].meta["row"] == 42


def test_three_sft_layouts_give_identical_examples(sft_by_layout):
    a, b, c = sft_by_layout.values()
    assert len(a) == 1_945 and a == b == c
    assert [x.prompt for x in a] == [x.prompt for x in b] == [x.prompt for x in c]
    assert [x.completion for x in a] == [x.completion for x in b] == [x.completion for x in c]
    trl_rows = _rows(TLDR / f"{SFT_FILES['trl']}.jsonl")
    assert [(x.prompt, x.completion) for x in a] == [(r["prompt"], r["completion"]) for r in trl_rows]
    assert [x.meta["layout"] for x in (a[0], b[0], c[0])] == list(SFT_FILES)


def test_raw_727_needs_an_explicit_opt_in_for_its_null_title_and_subreddit():
    path = str(_need(TLDR / RAW_727))
    with pytest.raises(DataError) as info:
        load.load_comparisons(path)
    assert (info.value.row, info.value.field) == (1, "info.subreddit")
    for needle in (RAW_727, "row 1", "info.title", "fill_missing"):
        assert needle in str(info.value)
    with pytest.warns(BadRowsWarning) as record, pytest.raises(DataError, match="no usable comparison rows"):
        load.load_comparisons(path, on_bad_row="skip")
    assert len(record[0].message.skipped) == 727
    loaded = load.load_comparisons(path, fill_missing=FILL)
    rows = _rows(TLDR / RAW_727)
    assert len(loaded) == 727
    for c, row in zip(loaded, rows, strict=True):
        texts = [s["text"].strip() for s in row["summaries"]]
        assert (c.chosen, c.rejected) == (texts[row["choice"]], texts[1 - row["choice"]])
        assert c.post.id == row["info"]["id"] and c.meta["worker"] == row["worker"]


def _loader_for(name: str):
    if "ratings" in name:
        return load.load_ratings, {}
    if "comparisons" in name:
        return load.load_comparisons, {"fill_missing": FILL} if "overlap727" in name else {}
    return load.load_sft, {}


@pytest.mark.parametrize(
    "name",
    sorted(p.relative_to(TLDR).as_posix() for p in TLDR.glob("**/*.jsonl"))
    if TLDR.exists()
    else ["(absent)"],
)
def test_every_shared_file_loads_through_its_loader(name, comparisons_10k, sft_by_layout):
    path = _need(TLDR / name)
    if path.name == PREF_10K:
        loaded = comparisons_10k
    elif path.name.removesuffix(".jsonl") in SFT_FILES.values():
        loaded = sft_by_layout[next(k for k, v in SFT_FILES.items() if v == path.stem)]
    else:
        fn, kwargs = _loader_for(name)
        loaded = fn(str(path), **kwargs)
    assert len(loaded) == len(path.read_bytes().splitlines())
    if name.startswith("mini/"):  # the first 32 rows of the full file, loaded the same way
        stem = path.name.removesuffix(".first32.jsonl")
        full = TLDR / f"{stem}.jsonl"
        if full.exists():
            fn, kwargs = _loader_for(name)
            assert loaded == fn(str(full), limit=32, **kwargs)


def test_ratings_keep_null_axes():
    ratings = load.load_ratings(str(_need(TLDR / "openai_axis_valid_overlap.ratings.jsonl")))
    assert len(ratings) == 8_585
    assert sum(r.axes["overall"] is None for r in ratings) == 50
    assert ratings[0].summary.startswith("Fiance and I recently got infected with scabies.")


def test_carperai_and_trl_comparison_layouts_agree():
    mini = _need(TLDR / "mini")
    carper = load.load_comparisons(
        str(mini / "openai_comparisons_valid_last10k.carperai_prompt_chosen_rejected.first32.jsonl")
    )
    trl = load.load_comparisons(
        str(
            mini / "openai_comparisons_valid_last10k.trl_tldr_preference_prompt_chosen_rejected.first32.jsonl"
        )
    )
    assert len(carper) == 32 and carper == trl
    assert (carper[0].meta["layout"], trl[0].meta["layout"]) == ("carperai", "trl")


# ---------------------------------------------------------------------------------------- bad rows

SFT_BAD = {  # row -> field (None: the whole row)
    2: "summary",
    3: "title",
    4: "post",
    5: "summary",
    6: None,
    7: None,
    9: None,
    11: "summary",
}


def test_bad_row_error_names_file_row_and_field():
    path = str(FIXTURES / "sft_bad_rows.jsonl")
    with pytest.raises(DataError) as info:
        load.load_sft(path)
    assert (info.value.source, info.value.row, info.value.field) == (path, 2, "summary")
    assert str(info.value) == f"{path}: row 2: field 'summary': missing"


def test_skip_mode_counts_every_bad_row_in_one_warning():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        examples = load.load_sft(str(FIXTURES / "sft_bad_rows.jsonl"), on_bad_row="skip")
    assert len(record) == 1 and isinstance(record[0].message, BadRowsWarning)
    skipped = record[0].message.skipped
    assert {e.row: e.field for e in skipped} == SFT_BAD
    assert "skipped 8 bad rows of 11" in str(record[0].message)
    assert [e.meta["row"] for e in examples] == [1, 10, 12]
    assert examples[0] == SFTExample(
        Post(
            "cats", "My cat ignores me", "I adopted a cat last month.\n\nShe hides all day. Is this normal?"
        ),
        "new cat hides all day, normal?",
    )
    messages = {e.row: str(e) for e in skipped}
    assert "invalid UTF-8" in messages[6] and "not valid JSON" in messages[7] and "JSON object" in messages[9]
    assert "empty text" in messages[5] and "got int" in messages[4] and "null" in messages[3]


def test_limit_counts_good_rows_only():
    with pytest.warns(BadRowsWarning):
        examples = load.load_sft(str(FIXTURES / "sft_bad_rows.jsonl"), on_bad_row="skip", limit=2)
    assert [e.meta["row"] for e in examples] == [1, 10]


@pytest.mark.parametrize(
    "name, loader, bad, good",
    [
        (
            "comparisons_bad_rows.jsonl",
            load.load_comparisons,
            {2: "prompt", 3: "rejected", 4: "chosen"},
            [1, 5],
        ),
        (
            "openai_raw_bad_rows.jsonl",
            load.load_comparisons,
            {2: "choice", 3: "summaries", 4: "extra.confidence"},
            [1, 6],
        ),
        ("sft_bad_rows.csv", load.load_sft, {2: "summary", 3: "title"}, [1, 4]),
    ],
)
def test_bad_row_fixtures(name, loader, bad, good):
    path = str(FIXTURES / name)
    with pytest.raises(DataError) as info:
        loader(path)
    first = min(bad)
    assert (info.value.row, info.value.field) == (first, bad[first])
    assert f"row {first}" in str(info.value) and name in str(info.value)
    with pytest.warns(BadRowsWarning) as record:
        examples = loader(path, on_bad_row="skip")
    assert {e.row: e.field for e in record[0].message.skipped} == bad
    assert [e.meta["row"] for e in examples] == good


def test_openai_raw_fixture_values_and_cnn_dm_count():
    with pytest.warns(BadRowsWarning, match="1 rows that are CNN/DM articles"):
        examples = load.load_comparisons(str(FIXTURES / "openai_raw_bad_rows.jsonl"), on_bad_row="skip")
    assert examples == [
        Comparison(
            Post("dogs", "Dog barks", "My dog barks at night.", "t3_x1"),
            "my dog is loud at night",
            "dog barks",
            7,
        ),
        Comparison(
            Post("dogs", "Dog barks", "My dog barks at night.", "t3_x1"),
            "dog barks",
            "my dog is loud at night",
        ),
    ]
    assert [e.confidence for e in examples] == [7, None]


def test_csv_keeps_multiline_posts():
    with pytest.warns(BadRowsWarning):
        examples = load.load_sft(str(FIXTURES / "sft_bad_rows.csv"), on_bad_row="skip")
    assert examples[0].post == Post("cats", "My cat ignores me", "I adopted a cat.\n\nShe hides. Normal?")


# ---------------------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def mini_trl_rows() -> list[dict]:
    return _rows(_need(TLDR / "mini" / "tldr_valid_1945.trl_prompt_completion.first32.jsonl"))


def test_json_parquet_csv_give_the_same_examples(tmp_path, mini_trl_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = load.load_sft(str(TLDR / "mini" / "tldr_valid_1945.trl_prompt_completion.first32.jsonl"))
    (tmp_path / "a.json").write_text(json.dumps(mini_trl_rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": mini_trl_rows}))
    (tmp_path / "c.json").write_text("".join(json.dumps(r) + "\n" for r in mini_trl_rows))
    pq.write_table(pa.Table.from_pylist(mini_trl_rows), tmp_path / "d.parquet")
    import csv

    with (tmp_path / "e.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(mini_trl_rows)
    for name in ("a.json", "b.json", "c.json", "d.parquet", "e.csv"):
        assert load.load_sft(str(tmp_path / name)) == expected, name


def test_folder_picks_the_split(tmp_path, mini_trl_rows):
    lines = [json.dumps(r) + "\n" for r in mini_trl_rows]
    (tmp_path / "train.jsonl").write_text("".join(lines[:20]))
    (tmp_path / "validation-00000-of-00001.jsonl").write_text("".join(lines[20:]))
    (tmp_path / "notes.txt").write_text("not data")
    assert len(load.load_sft(str(tmp_path))) == 20
    assert len(load.load_sft(str(tmp_path), "validation")) == 12
    with pytest.raises(DataError, match=r"no data file for split 'test' \(found: train.jsonl, validation"):
        load.load_sft(str(tmp_path), "test")
    unsplit = tmp_path / "unsplit"
    unsplit.mkdir()
    (unsplit / "part1.jsonl").write_text("".join(lines[:5]))
    (unsplit / "part2.jsonl").write_text("".join(lines[5:8]))
    assert len(load.load_sft(str(unsplit), "validation")) == 8


def test_clear_errors_for_missing_files_and_unknown_layouts(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load.load_sft(str(tmp_path / "absent.jsonl"))
    with pytest.raises(DataError, match="not a file, a folder, 'testbed' or a Hub id"):
        load.load_sft("no such thing")
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError) as info:
        load.load_sft(str(path))
    for needle in (
        "unknown sft layout",
        "['answer', 'question']",
        "tldr_3_filtered {subreddit, title, post, summary}",
        "trl {prompt, completion}",
    ):
        assert needle in str(info.value)
    with pytest.raises(DataError, match="use load_comparisons"):
        load.load_sft(str(FIXTURES / "comparisons_bad_rows.jsonl"))
    with pytest.raises(DataError, match="unknown sft layout 'alpaca'"):
        load.load_sft(str(path), layout="alpaca")
    with pytest.raises(ValueError, match="on_bad_row"):
        load.load_sft(str(path), on_bad_row="ignore")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no usable sft rows"):
        load.load_sft(str(empty))


def test_forced_layout_overrides_detection(mini_trl_rows, tmp_path):
    path = tmp_path / "x.jsonl"
    # both the trl and the CarperAI columns: detection reads the prompt style, layout= overrides it
    path.write_text("".join(json.dumps({**r, "label": "other"}) + "\n" for r in mini_trl_rows[:3]))
    detected = load.load_sft(str(path))
    assert [e.completion for e in detected] == [r["completion"] for r in mini_trl_rows[:3]]
    assert load.load_sft(str(path), layout="trl") == detected
    with pytest.raises(DataError, match="row 1: field 'prompt': not a TL;DR prompt"):
        load.load_sft(str(path), layout="carperai")


def test_hub_id_goes_through_datasets_load_dataset(monkeypatch, mini_trl_rows):
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(mini_trl_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load.load_sft("trl-lib/tldr", "validation")
    assert calls == [(("trl-lib/tldr",), {"split": "validation"})]
    assert [(e.prompt, e.completion) for e in examples] == [
        (r["prompt"], r["completion"]) for r in mini_trl_rows
    ]
    assert examples[3].meta["source"] == "hub:trl-lib/tldr[validation]" and examples[3].meta["row"] == 4


def test_hub_openai_raw_with_config_skips_cnn_dm(monkeypatch):
    import datasets

    reddit = _rows(_need(TLDR / "openai_comparisons_readme_example.openai_raw_schema.jsonl"))[0]
    cnn = json.loads(json.dumps(reddit))
    cnn["info"].update(post=None, title="CNN story", subreddit=None)
    for row in (reddit, cnn):  # the Hub schema also has article/site columns
        row["info"].setdefault("article", None)
        row["info"].setdefault("site", None)
    cnn["info"].update(article="(CNN) text", site="cnn")
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([cnn, reddit, cnn])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.warns(BadRowsWarning, match="skipped 2 rows that are CNN/DM"):
        examples = load.load_comparisons("openai/summarize_from_feedback:comparisons", "validation")
    assert calls == [(("openai/summarize_from_feedback", "comparisons"), {"split": "validation"})]
    assert len(examples) == 1 and examples[0].confidence == 8 and examples[0].meta["row"] == 2
    assert examples[0].chosen.startswith("we suspect other party")


def test_hub_failure_is_a_data_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataError, match=r"hub:CarperAI/openai_summarize_tldr\[valid\]: could not load: no internet"
    ):
        load.load_sft("CarperAI/openai_summarize_tldr", "valid")


def test_testbed_delegates_lazily(monkeypatch):
    calls = []
    fake = types.ModuleType("prefopt.data.testbed")
    fake.load_sft = lambda split, **kw: calls.append(("sft", split, kw)) or ["sft-example"]
    fake.load_comparisons = lambda split, **kw: calls.append(("cmp", split, kw)) or ["comparison"]
    monkeypatch.setitem(sys.modules, "prefopt.data.testbed", fake)
    assert load.load_sft("testbed", "validation", limit=5, seed=3) == ["sft-example"]
    assert load.load_comparisons("testbed", seed=1) == ["comparison"]
    assert calls == [("sft", "validation", {"seed": 3, "n": 5}), ("cmp", "train", {"seed": 1, "per_post": 2})]
    with pytest.raises(ValueError, match="do not apply to the testbed"):
        load.load_sft("testbed", layout="trl")


# ---------------------------------------------------------------------------------------- CLI helpers


def test_preview_detects_the_kind():
    sft = load.preview(str(_need(TLDR / "mini" / "tldr_valid_1945.carperai_prompt_label.first32.jsonl")), n=2)
    rows = _rows(TLDR / "mini" / "tldr_valid_1945.trl_prompt_completion.first32.jsonl")
    assert [(d["prompt"], d["completion"], d["row"]) for d in sft] == [
        (r["prompt"], r["completion"], i) for i, r in enumerate(rows[:2], 1)
    ]
    cmp = load.preview(str(FIXTURES / "comparisons_bad_rows.jsonl"), n=1)
    assert (
        cmp[0]["chosen"] == "new cat hides, normal?"
        and cmp[0]["layout"] == "trl"
        and "completion" not in cmp[0]
    )


class WordTokenizer:
    """Whitespace tokens; prompts also get one special token, as a BOS-adding tokenizer would."""

    def __call__(self, texts, add_special_tokens=True):
        extra = [0] if add_special_tokens else []
        return {"input_ids": [extra + [1] * len(t.split()) for t in texts]}


def test_stats_hand_example():
    examples = [SFTExample(Post("a", "b", "w " * k), "s " * k) for k in (1, 2, 3, 10)]
    # prompt words: "SUBREDDIT: r/a TITLE: b POST: <k words> TL;DR:" = 6 + k, plus the special token
    out = load.stats(examples, WordTokenizer(), max_prompt_tokens=10)
    assert (out["examples"], out["posts"], out["prompts_over_budget"]) == (4, 4, 1)
    assert out["prompt_tokens"]["min"] == 8 and out["prompt_tokens"]["max"] == 17
    assert out["prompt_tokens"]["p50"] == 9.5 and out["prompt_tokens"]["mean"] == 11.0
    assert out["completion_tokens"]["p90"] == pytest.approx(np.percentile([1, 2, 3, 10], 90)) == 7.9


def test_stats_on_real_comparisons_with_qwen(comparisons_10k):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(_need(SHARED / "qwen-tokenizer")))
    sample = comparisons_10k[:200]
    out = load.stats(sample, tok)
    lengths = [len(tok.encode(c.prompt)) for c in sample]
    assert out["prompt_tokens"]["p50"] == np.median(lengths) and out["prompt_tokens"]["max"] == max(lengths)
    assert out["rejected_tokens"]["max"] == max(len(tok.encode(" " + c.rejected)) for c in sample)
    assert out["posts"] == len({c.prompt for c in sample}) and out["with_confidence"] == 0


def test_testbed_comparisons_several_per_post_through_the_loader():
    rows = load.load_comparisons("testbed", "valid", limit=12, summaries_per_post=4)
    assert len(rows) == 12 and len({c.post.id for c in rows}) == 2  # 6 comparisons per post
    assert rows[:6] == testbed.post_comparisons(0, 10_000_000, 4)
    with pytest.raises(ValueError, match="testbed only"):
        load.load_comparisons("pairs.jsonl", summaries_per_post=4)
