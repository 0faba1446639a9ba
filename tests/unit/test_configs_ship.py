"""Every shipped config validates, and its sizes divide exactly on 1 and 8 processes."""

from pathlib import Path

import pytest

from prefopt.config import derive, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    cfg = load_config(path)
    derive(cfg, 1)
    if path.name.startswith("qwen3"):
        derive(cfg, 8)  # the real configs state an 8-GPU launch line
        assert cfg.model.eos_token == "<|endoftext|>"


def test_lora_configs_share_one_base():
    for path in CONFIGS:
        cfg = load_config(path)
        if "lora" in path.name:
            assert cfg.peft.method == "lora" and cfg.ppo.share_base


@pytest.mark.parametrize("name", ["qwen3-0.6b-tldr", "qwen3-1.7b-tldr-lora", "qwen3-8b-tldr-lora"])
def test_stated_peak_memory_is_what_prefopt_plan_computes(name):
    """The 'Expected peak GPU memory' comment of each real-run config is `prefopt plan`'s output."""
    import re

    from prefopt import plan as planning
    from prefopt.model_configs import model_config_for

    path = CONFIGS[0].parent / f"{name}.yaml"
    stated = re.search(r"SFT ([\d.]+) GiB, reward ([\d.]+) GiB, PPO ([\d.]+) GiB", path.read_text())
    assert stated, f"{path} states no expected peak memory"
    cfg = load_config(path)
    arch = model_config_for(cfg, None)
    stages = planning.plan(cfg, planning.Shape.of(arch), planning.trainable_parameters(arch, cfg))
    computed = [round(st.as_gib()["peak"], 1) for st in stages]
    assert [float(x) for x in stated.groups()] == computed
