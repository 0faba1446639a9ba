"""`prefopt peft compare` end to end on the tiny base: one process per method, a table and a plot."""

from __future__ import annotations

import json
import math

import pytest

from prefopt.peft_compare import COLUMNS, LABELS, compare


@pytest.mark.slow  # two child processes, each importing torch and transformers: ~30 s on 2 busy cores
def test_compare_two_methods_two_steps(tiny_cfg, tmp_path):
    cfg = tiny_cfg("data.limit_eval=4", "sft.n_eval_samples=2", "peft.r=4")
    out = tmp_path / "cmp"
    results = compare(cfg, out, steps=2, methods=["none", "lora-scratch"], log=lambda _: None)

    full, lora = results
    assert [r.error for r in results] == [None, None], [r.error for r in results]
    # the tiny base: h = 32, q = 2 heads x 16, kv = 1 head x 16, 2 layers; LoRA r = 4 on q, k, v, o
    h, q, kv, n_layers, r = 32, 32, 16, 2, 4
    assert lora.trainable == n_layers * r * ((h + q) + 2 * (h + kv) + (q + h)) == 1792
    assert full.trainable == full.total == lora.total - lora.trainable  # the base, every weight trained
    for res in results:
        assert res.steps == 2 and res.peak_rss_delta_mb > 0 and res.seconds > 0
        assert math.isfinite(res.valid_loss) and res.gold is not None
        done = json.loads((out / "runs" / res.method / "sft" / "DONE.json").read_text())
        assert done["valid/loss"] == res.valid_loss  # read from the stage's own record

    table = (out / "peft_compare.md").read_text().splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| method"))
    assert [c.strip() for c in table[header].strip("|").split("|")] == list(COLUMNS)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[header + 2 : header + 4]]
    assert [row[0] for row in rows] == [LABELS["none"], LABELS["lora-scratch"]]
    assert rows[1][1] == "1,792" and rows[0][2] == "100.00" and rows[1][5] == "2"
    assert (out / "peft_compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_method_that_cannot_run_is_reported_not_fatal(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.gradient_checkpointing=true")  # prefix tuning refuses gradient checkpointing
    results = compare(cfg, tmp_path / "cmp", steps=1, methods=["prefix"], log=lambda _: None)
    assert results[0].error.startswith("not run:") and "gradient_checkpointing" in results[0].error
    assert "prefix tuning: not run" in (tmp_path / "cmp" / "peft_compare.md").read_text()
