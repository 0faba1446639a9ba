"""Why bf16 on CPU wants few distinct batch widths: forward + backward of the harness model, ragged or bucketed.

    .venv/bin/python bench/bf16_shapes.py {fp32,bf16} {1,16}      # one process per cell (peak RSS)

40 steps on 4 rows with widths 150-239 tokens (about 40 distinct shapes), or those widths rounded up to a
multiple of 16 (7 shapes). Under bf16 autocast, oneDNN builds and caches a kernel for every new matmul
shape; prints seconds and peak RSS. Needs the harness artifacts ($PEER_BENCH_ARTIFACTS/model).
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch
from transformers import Qwen3ForCausalLM

from prefopt.batching import round_up


def main(mode: str, multiple: int) -> None:
    torch.manual_seed(0)
    model = Qwen3ForCausalLM.from_pretrained(os.path.join(os.environ["PEER_BENCH_ARTIFACTS"], "model"))
    widths = [round_up(150 + (i * 37) % 90, multiple) for i in range(40)]
    opt = torch.optim.AdamW(model.parameters(), 1e-5)
    t0 = time.perf_counter()
    for width in widths:
        ids = torch.randint(2, 3000, (4, width))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits = model(input_ids=ids).logits
        logits.float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{mode} widths x{multiple}: {len(set(widths))} shapes, {seconds:.2f} s, peak RSS {rss} MiB")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
