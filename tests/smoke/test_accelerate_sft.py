"""The SFT stage under `accelerate launch` with two CPU processes (DDP over gloo).

`accelerate launch --cpu --num_processes 2` does NOT start two processes: with `--cpu` accelerate uses
its simple launcher, which expects mpirun to start the copies, so it silently runs one. Two real CPU
processes need torchrun's launcher (`--multi_gpu`) with `ACCELERATE_USE_CPU=1`, which makes every
process pick the CPU and the gloo backend.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from prefopt.config import dump_config
from prefopt.runs import read_complete
from prefopt.tracking import read_metrics


def _launch(config_path, *overrides: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:  # a free port: other test runs on this machine may use the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "prefopt", "sft", str(config_path), *overrides]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_sft_under_accelerate_two_cpu_processes(tiny_cfg, tmp_path):
    # 48 examples, batch 8 = 4 per process x 2 processes; the CLI checks every stage's sizes for 2
    # processes, so PPO's minibatch (8 / 2 processes / 2 minibatches) needs micro-batches of 2
    cfg = tiny_cfg("ppo.micro_batch_size=2")
    config_path = tmp_path / "sft.yaml"
    config_path.write_text(dump_config(cfg))

    proc = _launch(config_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = cfg.run_dir / "sft"
    done = read_complete(out)
    assert done is not None and done["steps"] >= 4
    assert (out / "model" / "prefopt.json").is_file() and (out / "samples.jsonl").is_file()
    metrics = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in metrics if "train/loss" in r]
    assert steps == list(range(1, done["steps"] + 1))  # logged once (main process), no duplicates
    assert not (out / "LOCK.json").exists()

    # both processes really exist: with 2 of them, 8 per step cannot be 8 per micro-batch
    bad = _launch(config_path, "name=t2", "sft.micro_batch_size=8")
    assert bad.returncode != 0
    message = " ".join((bad.stdout + bad.stderr).split())
    assert "sft.batch_size / (sft.micro_batch_size x 2 processes): 8 is not divisible by 16" in message
