"""Tokenizer/model loading: dedicated PAD, EOS override, embedding growth, dropout off, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DistilBertConfig, DistilBertModel, LlamaConfig, Qwen3Config

from prefopt.models.load import (
    PAD_TOKEN,
    ModelLoadError,
    count_parameters_meta,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
QWEN_TOK = DATA / "qwen-tokenizer"
STORIES = DATA / "stories260K"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")


@pytest.fixture(scope="module")
def qwen_base_tok():
    _need(QWEN_TOK)
    return load_tokenizer(str(QWEN_TOK), eos_token="<|endoftext|>")


def test_qwen_tokenizer_as_shipped_keeps_its_distinct_pad():
    _need(QWEN_TOK)
    tok = load_tokenizer(str(QWEN_TOK))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert (tok.eos_token_id, tok.pad_token_id) == (151645, 151643)
    assert tok.prefopt_vocab_grew is False
    assert tok.padding_side == "right"


def test_qwen3_base_eos_override_adds_dedicated_pad(qwen_base_tok):
    tok = qwen_base_tok
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 151643
    assert tok.pad_token == PAD_TOKEN
    assert tok.pad_token_id == 151646  # the next id after the three shipped specials
    assert tok.prefopt_vocab_grew is True
    # PAD is one atomic token, never split, and distinct from EOS.
    ids = tok("hello<|pad|><|endoftext|>")["input_ids"]
    assert ids[-2:] == [151646, 151643]
    # Real Qwen BPE: "Hello world" is two tokens, the second with its leading space (Ġ).
    assert tok.convert_ids_to_tokens(tok("Hello world")["input_ids"]) == ["Hello", "Ġworld"]


def test_padding_batches_with_pad_not_eos(qwen_base_tok):
    tok = qwen_base_tok
    tok.padding_side = "left"
    try:
        batch = tok(["a b c", "a"], padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    short = batch["input_ids"][1]
    n_pad = int((batch["attention_mask"][1] == 0).sum())
    assert n_pad > 0 and (short[:n_pad] == tok.pad_token_id).all()
    assert (batch["input_ids"] != tok.eos_token_id).all()


def test_unknown_eos_override_is_a_clear_error():
    _need(QWEN_TOK)
    with pytest.raises(ModelLoadError, match="not in the vocabulary"):
        load_tokenizer(str(QWEN_TOK), eos_token="<|nope|>")


def test_stories260k_loads_and_greedy_decodes_the_known_story():
    _need(STORIES)
    tok = load_tokenizer(str(STORIES))
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id == 512 and tok.eos_token_id == 2
    model = load_causal_lm(str(STORIES), tok, device="cpu")
    assert model.dtype == torch.float32
    emb = model.get_input_embeddings().weight
    assert emb.shape == (513, 64)
    # The new PAD row is exactly the mean of the 512 pretrained rows; tying survives the resize.
    assert torch.allclose(emb[512], emb[:512].mean(0), atol=1e-6)
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert model.config.pad_token_id == 512
    ids = tok("Once upon a time", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=32, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    expected = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
    assert text.startswith(expected), text


def test_dropout_off_in_config_modules_and_attention(tmp_path):
    cfg = Qwen3Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, intermediate_size=64, attention_dropout=0.3,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tok = load_tokenizer(str(STORIES)) if STORIES.exists() else None
    if tok is None:
        pytest.skip(f"shared test data not found: {STORIES}")
    model = load_causal_lm(str(tmp_path), tok, device="cpu")
    assert model.config.attention_dropout == 0.0
    assert model.model.layers[0].self_attn.attention_dropout == 0.0
    kept = load_causal_lm(str(tmp_path), tok, device="cpu", dropout_off=False)
    assert kept.model.layers[0].self_attn.attention_dropout == pytest.approx(0.3)
    # dropout off => training-mode forward is deterministic.
    model.train()
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(model(x).logits, model(x).logits)


def test_disable_dropout_on_nn_dropout_modules():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    net.extra_dropout = 0.2
    disable_dropout(net)
    assert net[1].p == 0.0 and net.extra_dropout == 0.0


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nope"), tokenizer=None)
    with pytest.raises(ModelLoadError, match="config"):
        load_causal_lm(str(tmp_path), tokenizer=None)  # exists, but empty


def test_not_a_causal_lm_is_a_clear_error(tmp_path):
    _need(STORIES)
    cfg = DistilBertConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    DistilBertModel(cfg).save_pretrained(tmp_path)  # an encoder: no causal-LM class exists for it
    with pytest.raises(ModelLoadError, match="not a causal LM"):
        load_causal_lm(str(tmp_path), load_tokenizer(str(STORIES)), device="cpu")


def _llama_params_by_hand(c: LlamaConfig) -> int:
    h, v, i, L = c.hidden_size, c.vocab_size, c.intermediate_size, c.num_hidden_layers
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h  # q,k,v,o + gate/up/down + 2 RMSNorms
    embed = v * h * (1 if c.tie_word_embeddings else 2)
    return embed + L * per_layer + h  # + final norm


@pytest.mark.parametrize("tied", [True, False])
def test_count_parameters_meta_matches_formula_and_real_model(tied):
    cfg = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tied,
    )  # fmt: skip
    n = count_parameters_meta(cfg)
    assert n == _llama_params_by_hand(cfg)
    assert n == sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())


def test_count_parameters_meta_qwen3_06b():
    cfg = Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
    )  # fmt: skip
    # Qwen3 adds a per-head RMSNorm on q and k (2 * head_dim per layer) to the Llama layout.
    n_hand = (
        151936 * 1024
        + 28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 3 * 1024 * 3072 + 2 * 1024 + 2 * 128)
        + 1024
    )
    assert count_parameters_meta(cfg) == n_hand
    assert 0.59e9 < n_hand < 0.60e9  # the model card's "0.6B"
