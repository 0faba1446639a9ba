import subprocess
import sys

import pytest

from prefopt.config import ConfigError, build_config, derive, dump_config, load_config, parse_overrides


def test_overrides_are_typed_and_nested():
    cfg = build_config(
        {"ppo": {"kl_coef": 0.2}}, ["ppo.kl_coef=0.1", "peft.method=none", "data.limit_train=5"]
    )
    assert cfg.ppo.kl_coef == 0.1 and cfg.peft.method == "none" and cfg.data.limit_train == 5
    assert parse_overrides(["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("ppo.klcoef=1", "ppo.klcoef: unknown key"),
        ("ppo.kl_coef=abc", "ppo.kl_coef:"),
        ("peft.method=foo", "peft.method:"),
        ("sft.lr=-1", "sft.lr:"),
        ("model.attn_implementation=flash", "model.attn_implementation:"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_keys_are_named(override, needle):
    with pytest.raises(ConfigError) as err:
        build_config({}, [override])
    assert needle in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match="allowed here: .*kl_coef"):
        build_config({"ppo": {"kl_cof": 1}})


def test_derived_sizes_and_exact_division():
    cfg = build_config({}, ["ppo.rollout_batch_size=64", "ppo.num_minibatches=4", "ppo.micro_batch_size=8"])
    d = derive(cfg, num_processes=2)
    assert (d.ppo_local_rollout, d.ppo_minibatch, d.ppo_grad_accum) == (32, 8, 1)
    assert d.sft_grad_accum == 32 // (8 * 2)
    with pytest.raises(ConfigError, match=r"sft.batch_size / \(sft.micro_batch_size x 3 processes\)"):
        derive(cfg, num_processes=3)


def test_batch_width_multiple_defaults_to_16_under_mixed_precision():
    cfg = build_config({})
    assert derive(cfg).pad_multiple == 1 and derive(cfg, 1, "bf16").pad_multiple == 16
    assert derive(build_config({}, ["model.pad_to_multiple_of=8"]), 1, "bf16").pad_multiple == 8


def test_yaml_roundtrip(tmp_path):
    cfg = build_config({}, ["name=x", "ppo.adaptive_kl=true"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_cli_names_the_bad_key_without_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  kl_coef: high\n")
    proc = subprocess.run(
        [sys.executable, "-m", "prefopt", "config", "check", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "ppo.kl_coef" in proc.stderr and "Traceback" not in proc.stderr


def test_prefix_tuning_refuses_other_attention_kernels():
    assert build_config({}, ["model.attn_implementation=eager"]).model.attn_implementation == "eager"
    with pytest.raises(ConfigError, match="prefix brings its own attention"):
        build_config({}, ["peft.method=prefix", "model.attn_implementation=eager"])


def test_summaries_per_post_applies_to_the_testbed_only():
    assert build_config({}, ["data.testbed_summaries_per_post=4"]).data.testbed_summaries_per_post == 4
    with pytest.raises(ConfigError, match="testbed_summaries_per_post"):
        build_config({}, ["data.testbed_summaries_per_post=8"])
    with pytest.raises(ConfigError, match="is not the testbed"):
        build_config({}, ["data.comparisons_source=pairs.jsonl", "data.testbed_summaries_per_post=4"])
