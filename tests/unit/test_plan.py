"""Qwen3 sizes as data, and `prefopt plan`'s memory formula against hand computations."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from prefopt import plan as planning
from prefopt.config import build_config
from prefopt.model_configs import canonical_name, model_config_for, qwen3_config
from prefopt.models.load import count_parameters_meta

GIB = 2**30
P_06B = 596_049_920  # Qwen3-0.6B, tied embeddings counted once (peft_lesson's hand count)
LORA_06B = 28 * 8 * ((1024 + 2048) + 2 * (1024 + 1024) + (2048 + 1024))  # L*r*((h+q) + 2(h+kv) + (q+h))


def test_qwen3_0_6b_config_is_the_published_one():
    c = qwen3_config("Qwen/Qwen3-0.6B-Base")
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (1024, 28, 3072)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (16, 8, 128)
    assert c.vocab_size == 151_936 and c.tie_word_embeddings is True
    assert c.rope_parameters["rope_theta"] == 1e6
    assert count_parameters_meta(c) == P_06B


@pytest.mark.parametrize(
    "name, total_b, non_embedding_b",
    # the model cards' "Number of Parameters" and "(Non-Embedding)", at the cards' precision
    [("qwen3-0.6b", 0.6, 0.44), ("qwen3-1.7b", 1.7, 1.4), ("qwen3-4b", 4.0, 3.6),
     ("qwen3-8b", 8.2, 6.95), ("qwen3-14b", 14.8, 13.2)],
)  # fmt: skip
def test_family_counts_match_the_model_cards(name, total_b, non_embedding_b):
    c = qwen3_config(name)
    total = count_parameters_meta(c)
    embedding = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    digits = len(str(non_embedding_b).split(".")[1])
    assert round(total / 1e9, 1) == total_b
    assert round((total - embedding) / 1e9, digits) == non_embedding_b


def test_names_resolve_and_unknown_ones_are_refused(tmp_path):
    assert canonical_name("Qwen3-8B") == canonical_name("qwen/qwen3-8b-base") == "qwen3-8b"
    assert canonical_name("Qwen/Qwen2.5-7B") is None
    with pytest.raises(ValueError, match="known: qwen3-0.6b"):
        qwen3_config("llama-7b")
    cfg = build_config({"model": {"name_or_path": "nobody/nothing"}})
    with pytest.raises(ValueError, match="--model-config"):
        model_config_for(cfg)
    qwen3_config("qwen3-1.7b").save_pretrained(tmp_path)  # a local folder with config.json works too
    local = model_config_for(build_config({"model": {"name_or_path": str(tmp_path)}}))
    assert local.hidden_size == 2048


def test_testbed_preset_sizes_the_cached_tiny_base(tmp_path):
    from prefopt.models.tiny_base import MARKER

    cfg = build_config({"model": {"preset": "testbed-tiny", "cache_dir": str(tmp_path)}})
    assert model_config_for(cfg).vocab_size == 4000  # nothing cached: the spec's requested vocabulary
    cached = tmp_path / "tiny-base-0123"
    qwen3_config("qwen3-0.6b").save_pretrained(cached)
    assert model_config_for(cfg).vocab_size == 4000  # no marker yet: a partial build is ignored
    (cached / MARKER).write_text("{}")
    assert model_config_for(cfg).hidden_size == 1024


@pytest.fixture(scope="module")
def shape_06b() -> planning.Shape:
    return planning.Shape.of(qwen3_config("qwen3-0.6b"))


def test_trainable_parameters_on_the_meta_device(shape_06b):
    arch = qwen3_config("qwen3-0.6b")
    assert shape_06b == planning.Shape(P_06B, 28, 1024, 1024, 3072, 151_936)
    assert planning.trainable_parameters(arch, build_config({})) == LORA_06B == 2_293_760
    assert planning.trainable_parameters(arch, build_config({}, ["peft.method=none"])) == P_06B


def test_sft_memory_by_hand(shape_06b):
    # defaults: bf16 (b=2), LoRA, micro 8, prompt 512, summary 53, 64 greedy samples (batches of 32)
    m = planning.sft_memory(build_config({}), shape_06b, LORA_06B)
    assert m.weights == (596_049_920 + 2_293_760) * 2
    assert m.state == 2_293_760 * (2 + 8 + 4)  # bf16 grad, fp32 Adam m and v, fp32 master
    assert m.activations == 8 * 565 * 28 * 1024 * 70 == 9_071_820_800
    assert m.logits == 8 * 53 * 151_936 * (2 + 8)
    kv = 2 * 28 * 1024 * 565 * 32 * 2
    prefill = 32 * 512 * (4 * 1024 + 3 * 3072) * 2
    assert m.generation == kv + prefill + 32 * 151_936 * 10
    assert m.peak == 1_196_687_360 + 32_112_640 + 9_071_820_800 + 644_208_640  # training > generation
    assert round(m.peak / GIB, 2) == 10.19


def test_gradient_checkpointing_keeps_one_input_per_layer(shape_06b):
    cfg = build_config({}, ["model.gradient_checkpointing=true", "sft.micro_batch_size=4"])
    tokens = 4 * 565
    m = planning.sft_memory(cfg, shape_06b, LORA_06B)
    assert m.activations == tokens * 28 * 1024 * 2 + tokens * 1024 * 70


def test_ppo_shared_base_and_four_models_by_hand(shape_06b):
    p, t, heads = 596_049_920, 2_293_760, 2 * 1025
    shared = planning.ppo_memory(build_config({}), shape_06b, t, gpus=2)
    assert shared.weights == (p + 3 * t + heads) * 2  # one base, three adapters, value + reward heads
    assert shared.state == (2 * t + 1025) * (2 + 8 + 4 + 2)  # + DDP gradient buckets on 2 GPUs
    assert shared.activations == 2 * 16 * (512 + 53) * 28 * 1024 * 70  # policy and value graphs
    assert shared.logits == 110 * 151_936 * (2 + 12)  # one chunk: 110 positions = 64 MiB / (4 x 151,936)
    rollout = 64 // 2
    kv = 2 * 28 * 1024 * (512 + 53) * rollout * 2
    assert shared.generation == kv + rollout * 512 * 13_312 * 2 + rollout * 151_936 * 10
    full = planning.ppo_memory(build_config({}, ["peft.method=none"]), shape_06b, p, gpus=1)
    assert full.weights == (4 * p + heads) * 2  # policy, reference, value, reward
    assert full.state == (2 * p + 1025) * 14
    not_shared = build_config({}, ["ppo.share_base=false"])
    assert planning.ppo_memory(not_shared, shape_06b, t).weights == full.weights


def test_reward_memory_and_fp32(shape_06b):
    cfg = build_config({}, ["model.dtype=float32", "peft.method=none", "reward.micro_batch_size=2"])
    m = planning.reward_memory(cfg, shape_06b, P_06B)
    assert m.weights == (P_06B + 1025) * 4
    assert m.state == (P_06B + 1025) * (4 + 8)  # fp32 weights: no master copy
    assert m.activations == 2 * 2 * 565 * 28 * 1024 * 140  # A = 35 x 4 in fp32
    assert m.logits == m.generation == 0


@pytest.fixture
def wide(monkeypatch):
    """Rich wraps at 80 columns without a terminal: widen the CLI's consoles so lines stay whole."""
    from prefopt import cli

    for c in (cli.console, cli.err_console):
        monkeypatch.setattr(c, "width", 200)


def test_plan_command_prints_the_table_and_refuses_bad_sizes(wide):
    from prefopt.cli import app

    result = CliRunner().invoke(app, ["plan", "--model-config", "qwen3-0.6b"])
    bad = CliRunner().invoke(app, ["plan", "--gpus", "3"])
    assert result.exit_code == 0, result.output
    sft_row = next(line for line in result.output.splitlines() if line.startswith("│ sft"))
    assert sft_row.split("│")[-2].strip() == "10.19"
    assert "A = 35 x b" in result.output  # the formula is printed
    assert bad.exit_code == 2 and "not divisible by" in bad.output and "Traceback" not in bad.output
