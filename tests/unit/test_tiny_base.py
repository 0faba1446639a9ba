"""The testbed's tiny base: exact-round-trip BPE, distinct PAD/EOS, brief pretraining, save/reload, cache."""

from __future__ import annotations

import json
import random

import pytest
import torch

from prefopt.models import tiny_base as tb
from prefopt.models.load import count_parameters_meta, load_causal_lm, load_tokenizer

SMALL = tb.TinyBaseSpec(vocab_size=400, seq_len=64, batch_size=8, lr=3e-3)


def _texts(n: int = 80, seed: int = 0) -> list[str]:
    """Reddit-like posts without summaries, varied enough for BPE merges and a falling LM loss."""
    rng = random.Random(seed)
    who = ["my girlfriend", "my boss", "my roommate", "my brother", "my neighbour"]
    did = ["forgot my birthday", "ate my lunch again", "borrowed my car", "stopped answering texts"]
    feel = ["angry", "confused", "hurt", "relieved"]
    subs = ["relationships", "AskReddit", "personalfinance"]
    return [
        f"SUBREDDIT: r/{rng.choice(subs)}\n\nTITLE: {rng.choice(who).capitalize()} {rng.choice(did)}\n\n"
        f"POST: So yesterday {rng.choice(who)} {rng.choice(did)}. I feel {rng.choice(feel)} and "
        f"I don't know what to do. Should I talk to them? It happened {rng.randint(2, 9)} times."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def trained() -> tb.TinyBase:
    logs: list[str] = []
    base = tb.train_tiny_base(_texts(), seed=0, pretrain_steps=30, spec=SMALL, log=logs.append)
    assert any("tok/s" in line for line in logs)  # progress is reported
    return base


def test_default_architecture_is_the_tiny_qwen3_of_the_design():
    tok = tb.train_tokenizer(_texts(), vocab_size=400)
    cfg = tb.tiny_qwen3_config(tb.TinyBaseSpec(), tok)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        3,
        128,
        4,
        2,
    )
    assert (cfg.head_dim, cfg.intermediate_size, cfg.max_position_embeddings) == (32, 384, 1024)
    assert cfg.tie_word_embeddings and cfg.model_type == "qwen3"
    # With the default ~4k vocab: 4000*128 embeddings + 3 layers of attention/MLP/norms + final norm.
    cfg.vocab_size = 4000
    per_layer = 128 * 128 + 2 * 128 * 64 + 128 * 128 + 3 * 128 * 384 + 2 * 128 + 2 * 32
    assert count_parameters_meta(cfg) == 4000 * 128 + 3 * per_layer + 128


def test_tokenizer_round_trips_exactly_with_distinct_pad_and_eos(trained):
    tok = trained.tokenizer
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert 100 < len(tok) <= 400  # merges learned, capped by the requested vocab
    samples = _texts(5, seed=99) + ["  two  spaces\n\n\ttab, café — 😀 TL;DR: ok", "", "\n"]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # Frequent corpus words become single tokens; the specials are atomic.
    assert len(tok(" my", add_special_tokens=False)["input_ids"]) == 1
    assert tok("a<|endoftext|>", add_special_tokens=False)["input_ids"][-1] == tok.eos_token_id


def test_pretraining_loss_falls(trained):
    stats = trained.stats
    assert stats.steps == 30 and stats.tokens == 30 * 8 * 64
    assert stats.first_loss > 5.0  # ~ln(vocab) at random init
    assert stats.final_loss < stats.first_loss - 2.0
    assert stats.tokens_per_s > 0


def test_saved_base_reloads_through_the_pipeline_loaders_with_identical_logits(trained, tmp_path):
    out = tb.save_tiny_base(trained, tmp_path / "base", fingerprint="abc")
    marker = json.loads((out / tb.MARKER).read_text())
    assert marker["fingerprint"] == "abc" and marker["steps"] == 30
    tok = load_tokenizer(str(out))
    assert tok.prefopt_vocab_grew is False  # the base already has its own PAD
    assert (tok.eos_token_id, tok.pad_token_id) == (
        trained.tokenizer.eos_token_id,
        trained.tokenizer.pad_token_id,
    )
    model = load_causal_lm(str(out), tok, device="cpu")
    assert type(model).__name__ == "Qwen3ForCausalLM"
    batch = tok(_texts(3, seed=5), return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = trained.model.eval()(**batch).logits
        got = model(**batch).logits
    assert torch.equal(got, expected)
    text = "SUBREDDIT: r/AskReddit"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_ensure_reuses_complete_cache_and_rebuilds_partial(tmp_path, monkeypatch):
    texts, calls = _texts(30), []
    real_build = tb.build_tiny_base

    def counting_build(*args, **kwargs):
        calls.append(kwargs["fingerprint"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tb, "build_tiny_base", counting_build)
    kwargs = dict(texts=texts, seed=0, pretrain_steps=2, spec=SMALL, log=lambda s: None)
    first = tb.ensure_tiny_base(tmp_path, **kwargs)
    assert len(calls) == 1 and first.name == f"tiny-base-{calls[0]}"
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    assert tb.read_marker(first)["fingerprint"] == calls[0]
    assert tb.ensure_tiny_base(tmp_path, **kwargs) == first and len(calls) == 1  # reused
    (first / tb.MARKER).unlink()  # simulate a build interrupted before its marker
    assert tb.ensure_tiny_base(tmp_path, **kwargs) == first and len(calls) == 2  # rebuilt
    assert tb.read_marker(first) is not None
    other = tb.ensure_tiny_base(tmp_path, **{**kwargs, "seed": 1})  # a different recipe: its own folder
    assert other != first and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no temp left


def test_ensure_keeps_a_copy_another_process_finished_first(tmp_path, monkeypatch):
    real_build = tb.build_tiny_base
    kwargs = dict(texts=_texts(30), seed=0, pretrain_steps=1, spec=SMALL, log=lambda s: None)

    def racing_build(out_dir, **kw):
        real_build(out_dir.parent / f"tiny-base-{kw['fingerprint']}", **kw)  # the other process wins
        (out_dir.parent / f"tiny-base-{kw['fingerprint']}" / "winner").write_text("")
        return real_build(out_dir, **kw)

    monkeypatch.setattr(tb, "build_tiny_base", racing_build)
    final = tb.ensure_tiny_base(tmp_path, **kwargs)
    assert (final / "winner").exists()  # not replaced under the other process's feet
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # our temporary copy is gone


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        tb.train_tiny_base([], pretrain_steps=1, spec=SMALL)
