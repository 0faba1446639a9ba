"""The SFT stage end to end on a tiny model: it learns, it saves, it resumes exactly."""

import pytest
import torch
from safetensors.torch import load_file

import prefopt.sft.train as sft_train
from prefopt.runs import is_complete, read_complete
from prefopt.tracking import read_metrics


def _weights(model_dir):
    files = sorted(model_dir.glob("*.safetensors"))
    out = {}
    for f in files:
        out |= load_file(str(f))
    return out


def test_sft_full_learns_and_saves(tiny_cfg):
    cfg = tiny_cfg("sft.epochs=3", "sft.lr=1e-2")
    out = sft_train.train(cfg)
    steps = read_complete(out)["steps"]
    assert is_complete(out) and (out / "model" / "prefopt.json").is_file()
    losses = [r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == steps >= 12 and losses[-1] < losses[0] * 0.8
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 4
    done = read_metrics(out / "metrics.jsonl")[-1]
    assert "samples/rouge1" in done and "samples/gold" in done and "valid/loss" in done


@pytest.mark.parametrize("method", ["lora", "lora-scratch"])
def test_peft_sft_keeps_base_bit_identical(tiny_cfg, tiny_base, method):
    from prefopt.models.adapters import load_merged_policy
    from prefopt.models.load import load_causal_lm, load_tokenizer

    cfg = tiny_cfg(f"peft.method={method}", "peft.r=4", "sft.lr=1e-2")
    out = sft_train.train(cfg)
    base = _weights(tiny_base)
    tok = load_tokenizer(str(out / "model"))
    merged = load_merged_policy(out / "model", tok, device="cpu").state_dict()
    fresh = load_causal_lm(str(tiny_base), tok, device="cpu").state_dict()
    # the base folder on disk is untouched, and the merged policy differs from it (the adapter learned)
    assert all(torch.equal(fresh[k], v) for k, v in base.items() if k in fresh)
    changed = [k for k in fresh if not torch.equal(fresh[k], merged[k])]
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)


def test_sft_killed_and_resumed_equals_uninterrupted(tiny_cfg, monkeypatch):
    straight = sft_train.train(tiny_cfg("name=a"))

    real_save = sft_train._save_ckpt

    def save_then_die(st, model, opt, sched, step):
        real_save(st, model, opt, sched, step)
        if step == 3:
            raise KeyboardInterrupt  # the process is killed right after the step-3 checkpoint

    monkeypatch.setattr(sft_train, "_save_ckpt", save_then_die)
    cfg = tiny_cfg("name=b", "sft.save_every=3")
    with pytest.raises(KeyboardInterrupt):
        sft_train.train(cfg)
    assert not is_complete(cfg.run_dir / "sft")
    monkeypatch.setattr(sft_train, "_save_ckpt", real_save)
    resumed = sft_train.train(cfg)
    a, b = _weights(straight / "model"), _weights(resumed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
