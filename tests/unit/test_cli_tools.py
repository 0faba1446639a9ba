"""`prefopt data preview|stats` and `prefopt peft`: what they print, checked against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prefopt.data import testbed

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
QWEN_TOKENIZER = SHARED / "qwen-tokenizer"
MINI_SFT = SHARED / "tldr" / "mini"


@pytest.fixture
def run(monkeypatch):
    """Invoke the CLI with consoles wide enough that rich does not wrap the lines we read."""
    from prefopt import cli

    for console in (cli.console, cli.err_console):
        monkeypatch.setattr(console, "width", 220)

    def invoke(*args: str):
        return CliRunner().invoke(cli.app, list(args))

    return invoke


def _needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")


# ---------------------------------------------------------------- data preview


def test_preview_testbed_shows_prompt_reference_and_gold(run):
    result = run("data", "preview", "testbed", "-n", "2")
    assert result.exit_code == 0, result.output
    for ex in testbed.load_sft("train", 2):
        assert ex.post.title in result.output
        assert f"reference — gold {ex.meta['gold']:.3f}" in result.output
    assert result.output.count("TL;DR:") == 2


def test_preview_testbed_comparisons(run):
    result = run("data", "preview", "testbed", "-n", "1", "--kind", "comparisons", "--split", "valid")
    assert result.exit_code == 0, result.output
    c = testbed.load_comparisons("valid", 1)[0]
    assert f"chosen — gold {c.meta['gold_chosen']:.3f}" in result.output
    assert f"rejected — gold {c.meta['gold_rejected']:.3f}" in result.output


def test_preview_real_file_has_no_gold(run):
    _needs(MINI_SFT)
    path = next(MINI_SFT.glob("*subreddit_title_post_summary*"))
    first = json.loads(path.read_text().splitlines()[0])
    result = run("data", "preview", str(path), "-n", "1")
    assert result.exit_code == 0, result.output
    assert first["title"][:40] in result.output and "gold" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "preview", "missing.jsonl"], "missing.jsonl: no such file or folder"),
        (["data", "preview", "testbed", "--split", "nope"], "unknown split 'nope'"),
        (["data", "preview", "testbed", "--kind", "ratings"], "--kind must be 'sft' or 'comparisons'"),
        (["data", "stats", "missing.jsonl", "--tokenizer", "x"], "missing.jsonl: no such file or folder"),
    ],
)
def test_bad_input_is_one_clear_line(run, args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_row_names_file_and_line(run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"subreddit": "a", "title": "t", "post": "p", "summary": "s"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "summary": None}) + "\n")
    result = run("data", "stats", str(bad), "--tokenizer", "unused")
    assert result.exit_code == 2 and f"{bad}: row 2: field 'summary'" in result.output


# ---------------------------------------------------------------- data stats


def _row(output: str, first_cell: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(f"│ {first_cell} "))
    return [cell.strip() for cell in line.split("│")[2:-1]]


def test_stats_testbed_with_the_qwen_tokenizer(run):
    _needs(QWEN_TOKENIZER)
    from transformers import AutoTokenizer

    n = 300
    result = run("data", "stats", "testbed", "--limit", str(n), "--tokenizer", str(QWEN_TOKENIZER))
    assert result.exit_code == 0, result.output
    sft = testbed.load_sft("train", n)
    cmps = testbed.load_comparisons("train", n)
    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    prompt_lengths = [len(ids) for ids in tok([e.prompt for e in sft])["input_ids"]]
    completion_lengths = [len(tok(e.completion, add_special_tokens=False)["input_ids"]) for e in sft]
    assert f"{n:,} examples" in result.output
    assert _row(result.output, "prompt")[2] == f"{np.median(prompt_lengths):.1f}"  # p50
    assert _row(result.output, "completion")[-1] == f"{max(completion_lengths):.1f}"  # max
    assert f"two labelers agree {testbed.labeler_agreement(cmps):.3f}" in result.output
    assert f"noise ceiling (accuracy of the noiseless gold labeler) {testbed.noise_ceiling(cmps):.3f}" in (
        result.output
    )
    clean = [e.meta["gold"] for e in sft if e.meta["quality"] == "clean"]
    terse = sorted(e.meta["gold"] for e in sft if e.meta["quality"] == "terse")
    assert _row(result.output, "clean")[1:3] == [f"{len(clean):,}", f"{np.mean(clean):.3f}"]
    assert _row(result.output, "terse")[4] == f"{np.median(terse):.3f}"  # p50


def test_stats_defaults_to_the_cached_tiny_tokenizer(run, tmp_path):
    from prefopt.commands.data_cmd import cached_tiny_tokenizer
    from prefopt.models.tiny_base import MARKER, train_tokenizer

    cache = tmp_path / "cache"
    assert cached_tiny_tokenizer(cache) is None
    empty = run("data", "stats", "testbed", "--limit", "5", "--cache-dir", str(cache))
    assert empty.exit_code == 2 and "pass --tokenizer PATH" in empty.output
    partial = cache / "tiny-base-aaaa"  # no marker: an interrupted build is not used
    train_tokenizer(testbed.corpus(40), vocab_size=300).save_pretrained(partial)
    assert cached_tiny_tokenizer(cache) is None
    (partial / MARKER).write_text("{}")
    assert cached_tiny_tokenizer(cache) == str(partial)
    result = run("data", "stats", "testbed", "--limit", "5", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    assert f"tokenizer {partial}" in result.output and "5 examples" in result.output


# ---------------------------------------------------------------- peft


def test_peft_lesson_on_qwen3_1_7b(run):
    result = run("peft", "--model-config", "qwen3-1.7b")
    assert result.exit_code == 0, result.output
    h, n_layers, q, kv, r = 2048, 28, 16 * 128, 8 * 128, 8
    lora = n_layers * r * ((h + q) + 2 * (h + kv) + (q + h))
    assert lora == 3_211_264 and f"{lora:,}" in result.output
    assert "1,720,574,976" in result.output  # full fine-tuning: every parameter (tied embeddings once)
    assert "Qwen/Qwen3-1.7B-Base" in result.output and "NO" not in result.output


def test_peft_unknown_model_config(run):
    result = run("peft", "--model-config", "gpt-5")
    assert result.exit_code == 2 and "unknown model config 'gpt-5'" in result.output
