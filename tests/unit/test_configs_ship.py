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
