"""The `prefopt peft` lesson: its counts against hand-worked numbers and closed-form formulas."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from transformers import LlamaConfig

from prefopt.peft_lesson import lesson_tables, print_lesson


@pytest.fixture(scope="module")
def printed() -> tuple[dict, str]:
    console = Console(file=io.StringIO(), width=220, record=True)
    tables = print_lesson(console)
    return tables, console.export_text()


def test_toy_linear_counts(printed):
    tables, _ = printed
    counts = {row["name"]: (row["trainable"], row["total"]) for row in tables["toy"]}
    assert counts == {
        "nn.Linear(10, 5)": (55, 55),  # 10*5 weights + 5 biases
        "scratch LoRA, r=2": (30, 85),  # A: 2x10, B: 5x2; the 55 base parameters frozen
        "scratch bottleneck adapter, b=2": (27, 82),  # down 5->2 (12) + up 2->5 (15)
        "peft LoRA (get_peft_model)": (30, 85),
    }
    assert all(row["trainable"] == row["formula_value"] for row in tables["toy"])
    assert "lora_A" in tables["toy"][1]["tree"] and "lora_A" in tables["toy"][3]["tree"]


def test_qwen3_0_6b_counts_equal_the_formulas(printed):
    tables, _ = printed
    rows = {row["key"]: row for row in tables["model"]["rows"]}
    h, n_layers, q, kv, mlp, vocab, head_dim = 1024, 28, 16 * 128, 8 * 128, 3072, 151936, 128
    per_layer = 2 * h * q + 2 * h * kv + 3 * h * mlp + 2 * h + 2 * head_dim  # attn, MLP, 2 norms, q/k norms
    base = vocab * h + n_layers * per_layer + h  # tied embeddings: the LM head is not counted twice
    assert base == 596_049_920  # "0.6B"; 0.44B without the embedding, as Qwen's model card says
    lora = n_layers * 8 * ((h + q) + 2 * (h + kv) + (q + h))
    expected = {
        "base": base,
        "lora": lora,
        "peft_lora": lora,
        "adapter": n_layers * 2 * (2 * h * 64 + 64 + h),
        "prefix": 20 * n_layers * 2 * kv,
        "prefix_mlp": 20 * kv + kv * kv + kv + kv * 2 * n_layers * kv + 2 * n_layers * kv,
    }
    assert {key: row["trainable"] for key, row in rows.items()} == expected
    assert lora == 2_293_760
    for key, row in rows.items():
        assert row["formula_value"] == row["trainable"], key
        if key != "base":
            assert row["total"] == base + row["trainable"], key


def test_print_lesson_shows_the_numbers(printed):
    _, text = printed
    for shown in ("r*(in+out) = 2*(10+5)", "596,049,920", "2,293,760", "1,146,880", "Qwen3-0.6B"):
        assert shown in text
    assert " NO " not in text


def test_lesson_on_another_architecture():
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=500,
        tie_word_embeddings=False,
    )
    rows = lesson_tables(cfg)["model"]["rows"]
    assert rows[0]["trainable"] == 2 * 500 * 64 + 3 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96 + 2 * 64) + 64
    assert all(row["trainable"] == row["formula_value"] for row in rows)
