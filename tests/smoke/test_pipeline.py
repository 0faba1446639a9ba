"""`prefopt run` killed at any stage and started again finishes with the same results."""

import json

import pytest

import prefopt.pipeline as pipeline
import prefopt.trainstate as trainstate
from prefopt.runs import is_complete


def _results(run_dir) -> dict:
    """eval/results.json without wall-clock fields."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if "second" not in k and "time" not in k}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    return strip(json.loads((run_dir / "eval" / "results.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("kill_in", ["reward", "ppo"])
def test_run_killed_and_restarted_gives_the_same_results(tiny_cfg, monkeypatch, kill_in):
    overrides = ("reward.save_every=2", "ppo.save_every=1")
    straight = tiny_cfg("name=straight", *overrides)
    pipeline.run_pipeline(straight, report=False)

    killed = tiny_cfg("name=killed", *overrides)
    current = {"stage": None}
    real_run_stage, real_save = pipeline.run_stage, trainstate.save_checkpoint

    def run_stage(cfg, name):
        current["stage"] = name
        return real_run_stage(cfg, name)

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if current["stage"] == kill_in:
            raise KeyboardInterrupt  # the process dies right after the stage's first checkpoint
        return path

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    monkeypatch.setattr(trainstate, "save_checkpoint", save_then_die)  # every stage saves through it
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(killed, report=False)
    assert not is_complete(killed.run_dir / kill_in)
    monkeypatch.undo()
    pipeline.run_pipeline(killed, report=False)
    assert _results(straight.run_dir) == _results(killed.run_dir)
