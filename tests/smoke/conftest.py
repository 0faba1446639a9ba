"""Shared fixtures of the stage smoke tests: one tiny base model for the whole session."""

from pathlib import Path

import pytest

from prefopt.config import build_config


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny Qwen3 + BPE tokenizer trained on 300 testbed posts for a few steps (seconds, not minutes)."""
    from prefopt.data.testbed import corpus
    from prefopt.models.tiny_base import TinyBaseSpec, build_tiny_base

    spec = TinyBaseSpec(vocab_size=800, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        intermediate_size=64, seq_len=128, batch_size=8)  # fmt: skip
    out = tmp_path_factory.mktemp("tiny") / "base"
    return build_tiny_base(out, texts=corpus(300, seed=0), pretrain_steps=5, spec=spec, log=lambda _: None)


@pytest.fixture
def tiny_cfg(tiny_base, tmp_path):
    """A config pointing every stage at the tiny base and a few testbed rows."""

    def make(*overrides: str):
        return build_config(
            {
                "name": "t",
                "output_dir": str(tmp_path / "runs"),
                "model": {"name_or_path": str(tiny_base)},
                "data": {"limit_train": 48, "limit_eval": 8, "max_prompt_tokens": 256},
                "peft": {"method": "none"},
                "sft": {"batch_size": 8, "micro_batch_size": 4, "lr": 3e-3, "n_eval_samples": 4, "log_every": 1},
                "reward": {"batch_size": 8, "micro_batch_size": 4, "log_every": 1},
                "ppo": {"total_episodes": 16, "rollout_batch_size": 8, "num_minibatches": 2, "micro_batch_size": 4,
                        "ppo_epochs": 2, "response_length": 12},
                "eval": {"n_posts": 8, "bootstrap": 50},
            },
            list(overrides),
        )  # fmt: skip

    return make


@pytest.fixture
def accelerate_launch():
    """Run `python -m prefopt ARGS` as 2 real CPU processes under accelerate (DDP over gloo).

    `accelerate launch --cpu --num_processes 2` starts ONE process (its simple launcher expects mpirun);
    two real processes need torchrun's launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=1."""
    import os
    import socket
    import subprocess
    import sys

    def launch(*args: str) -> subprocess.CompletedProcess:
        with socket.socket() as s:  # a free port: other runs on this machine may hold the default one
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "prefopt", *args]  # fmt: skip
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420, check=False)

    return launch
