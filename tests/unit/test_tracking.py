"""Tracker (metrics.jsonl + TensorBoard) and progress bars (tty vs plain log lines)."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import torch
from tqdm import tqdm

import prefopt.tracking as tracking
from prefopt.tracking import PlainProgress, Tracker, progress, read_metrics


def _tb_scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tracker_writes_jsonl_lines_and_tensorboard_scalars(tmp_path):
    stage = tmp_path / "run" / "sft"
    with Tracker(stage, enabled=True) as tr:
        tr.log(0, {"loss": 2.5, "tokens": 128})
        tr.log(1, {"loss": torch.tensor(1.25), "lr": np.float32(0.5)})
        # flushed per line: readable while the run goes on
        assert [r["step"] for r in read_metrics(stage / "metrics.jsonl")] == [0, 1]
        with pytest.raises(ValueError, match="reserved"):
            tr.log(2, {"step": 3.0})
    records = read_metrics(stage)
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"step": 0, "loss": 2.5, "tokens": 128},
        {"step": 1, "loss": 1.25, "lr": 0.5},
    ]
    assert all(abs(r["time"] - records[0]["time"]) < 60 for r in records)
    assert _tb_scalars(stage / "tb", "loss") == [(0, 2.5), (1, 1.25)]
    with pytest.raises(RuntimeError, match="closed"):
        tr.log(3, {"loss": 1.0})


def test_tracker_off_the_main_process_writes_nothing(tmp_path, monkeypatch):
    Tracker(tmp_path / "a", enabled=False).log(0, {"loss": 1.0})
    monkeypatch.setenv("RANK", "3")  # as torchrun / accelerate set it on other ranks
    tr = Tracker(tmp_path / "b")
    tr.log(0, {"loss": 1.0})
    tr.close()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resume_drops_records_after_the_checkpoint_and_a_cut_off_line(tmp_path):
    with Tracker(tmp_path, tensorboard=False, enabled=True) as tr:
        for step in range(6):
            tr.log(step, {"loss": float(step), "nan_loss": math.nan})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # the run died mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(6))
    assert math.isnan(read_metrics(tmp_path)[0]["nan_loss"])
    with Tracker(tmp_path, tensorboard=False, enabled=True, resume_step=3) as tr:
        tr.log(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_resume_purges_tensorboard_steps_after_the_checkpoint(tmp_path):
    with Tracker(tmp_path, enabled=True) as tr:
        for step in range(5):
            tr.log(step, {"loss": float(step)})
    with Tracker(tmp_path, enabled=True, resume_step=2) as tr:
        tr.log(3, {"loss": 30.0})
    assert _tb_scalars(tmp_path / "tb", "loss") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]


def test_read_metrics_rejects_corruption_in_the_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        read_metrics(tmp_path)


def test_progress_off_a_terminal_writes_plain_lines_every_10_percent():
    out = io.StringIO()  # not a tty, as in a log file or CI
    bar = progress(range(50), desc="sft", file=out)
    assert isinstance(bar, PlainProgress)
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=1.0 / (i + 1))
    assert seen == list(range(50))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [int(re.match(r"sft: (\d+)/50 \(\d+%\)", line).group(1)) for line in lines] == list(
        range(5, 51, 5)
    )
    assert re.fullmatch(
        r"sft: 50/50 \(100%\) \| [\d.e+]+ it/s \| elapsed 0:\d\d \| eta 0:00 \| loss=0\.02", lines[-1]
    )


def test_progress_without_total_writes_a_line_every_interval(monkeypatch):
    clock = iter(range(0, 1000, 4))  # each monotonic() call advances 4 s
    monkeypatch.setattr(tracking.time, "monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    bar = progress(desc="gen", file=out, every_s=10.0)
    for _ in range(7):
        bar.update(2)
    bar.close()
    lines = out.getvalue().splitlines()
    # start at t=0; updates at t=4,8,12,...: lines at 12 (6 it), 24 (12 it), then the final 14 it at close
    assert [line.split(" |")[0] for line in lines] == ["gen: 6 it", "gen: 12 it", "gen: 14 it"]
    assert lines[0] == "gen: 6 it | 0.5 it/s | elapsed 0:12"


def test_progress_on_a_terminal_is_tqdm_and_silent_off_main(monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    tty = FakeTTY()
    bar = progress(total=3, desc="ppo", file=tty)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "3/3" in tty.getvalue()

    quiet = io.StringIO()
    assert list(progress(range(4), file=quiet, enabled=False)) == [0, 1, 2, 3]
    assert quiet.getvalue() == ""
    monkeypatch.setenv("RANK", "1")  # a non-main rank: still iterates, prints nothing
    before = tty.getvalue()
    assert list(progress(range(4), desc="ppo", file=tty)) == [0, 1, 2, 3]
    assert tty.getvalue() == before
