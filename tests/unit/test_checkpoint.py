"""Checkpoints: exact resume (bit-identical weights), crash safety, pruning, model round trips."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from prefopt.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

N_STEPS, RESUME_AT = 10, 4


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build():
    """A model with dropout, AdamW and a LambdaLR warm-up/decay schedule (init draws from torch RNG)."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3) / (1 + 0.2 * s))
    return model, opt, sched


def _train(model, opt, sched, data_gen: torch.Generator, steps: range) -> None:
    """Every source of randomness a stage uses: a seeded data stream (its own generator), dropout and
    torch.randn (global torch RNG), python random and numpy draws."""
    model.train()
    for _ in steps:
        x = torch.randn(8, 6, generator=data_gen)
        y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(8, 1)
        scale = random.uniform(0.5, 1.5) * float(np.random.uniform(0.5, 1.5))
        loss = scale * ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _straight_run():
    _seed_all(0)
    model, opt, sched = _build()
    _train(model, opt, sched, torch.Generator().manual_seed(7), range(N_STEPS))
    return model


def _resumed_run(ckpt_root, restore_rng: bool = True):
    _seed_all(0)
    model, opt, sched = _build()
    gen = torch.Generator().manual_seed(7)
    _train(model, opt, sched, gen, range(RESUME_AT))
    save_checkpoint(
        ckpt_root,
        RESUME_AT,
        model_state=model.state_dict(),
        optimizer=opt,
        scheduler=sched,
        extra={"data_gen": gen.get_state(), "step": RESUME_AT, "kl": (0.05, {3: "x"})},
    )
    del model, opt, sched, gen
    # A fresh process would start from other RNG states and other initial weights.
    _seed_all(12345)
    model, opt, sched = _build()
    ckpt = latest_checkpoint(ckpt_root)
    extra = load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, restore_rng=restore_rng)
    assert extra["step"] == RESUME_AT and checkpoint_step(ckpt) == RESUME_AT
    assert extra["kl"] == (0.05, {3: "x"})  # tuples and int keys round-trip exactly
    gen = torch.Generator()
    gen.set_state(extra["data_gen"])
    _train(model, opt, sched, gen, range(RESUME_AT, N_STEPS))
    return model


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    straight = _straight_run().state_dict()
    resumed = _resumed_run(tmp_path / "ckpt").state_dict()
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_without_rng_restore_diverges(tmp_path):
    # The control: the equality above really depends on the restored RNG states.
    straight = _straight_run().state_dict()
    resumed = _resumed_run(tmp_path / "ckpt", restore_rng=False).state_dict()
    assert not all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    good = save_checkpoint(tmp_path, 1, model_state=model.state_dict(), optimizer=opt, extra={"pos": 1})
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    real_save = torch.save

    def half_write_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # leave a truncated file behind, as a full disk would
            fh.truncate(7)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_write_then_fail)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, model_state=model.state_dict(), optimizer=opt, extra={"pos": 2})
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == good
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # temp folder cleaned up
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    fresh = nn.Linear(4, 3)
    assert load_checkpoint(good, model=fresh, optimizer=torch.optim.AdamW(fresh.parameters())) == {"pos": 1}


def test_hard_crash_leftovers_are_ignored_then_cleaned(tmp_path):
    good = save_checkpoint(tmp_path, 3, extra={"pos": 3})
    # A kill -9 mid-save leaves a temp folder; a partial copy lacks meta.json.
    (tmp_path / ".tmp-step-00000009-abc").mkdir()
    (tmp_path / ".tmp-step-00000009-abc" / "optimizer.pt").write_bytes(b"\x80partial")
    (tmp_path / "step-00000008").mkdir()
    # Killed while re-saving step 2: the old step-2 was moved aside, the new one never arrived.
    aside = tmp_path / ".old-step-00000002-beef"
    save_checkpoint(tmp_path, 2, extra={"pos": 2}, keep_last=None).rename(aside)
    assert latest_checkpoint(tmp_path) == good
    save_checkpoint(tmp_path, 4, keep_last=None)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000004", "step-00000008"]
    assert load_checkpoint(tmp_path / "step-00000002", restore_rng=False) == {"pos": 2}


def test_keep_last_prunes_oldest_after_new_one_exists(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, extra={"step": step}, keep_last=2)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [30, 40]
    # Saving a step again replaces it; keep_last=None keeps everything.
    save_checkpoint(tmp_path, 40, extra={"step": "again"}, keep_last=None)
    save_checkpoint(tmp_path, 50, keep_last=None)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [30, 40, 50]
    assert load_checkpoint(tmp_path / "step-00000040", restore_rng=False) == {"step": "again"}
    assert latest_checkpoint(tmp_path / "missing") is None


def test_tied_weights_and_model_callback_round_trip(tmp_path):
    torch.manual_seed(0)
    emb, head = nn.Embedding(11, 4), nn.Linear(4, 11, bias=False)
    head.weight = emb.weight  # tied, as in Qwen3-0.6B
    tied = nn.ModuleDict({"emb": emb, "head": head})

    def save_adapter(folder):
        safetensors.torch.save_file({"lora_A": torch.full((2, 4), 0.5)}, folder / "adapter.safetensors")
        (folder / "adapter_config.json").write_text(json.dumps({"r": 2}))

    loaded = {}

    def load_adapter(folder):
        loaded.update(safetensors.torch.load_file(folder / "adapter.safetensors"))

    ckpt = save_checkpoint(tmp_path, 5, model_state=tied.state_dict(), save_model_fn=save_adapter)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 5 and "model/adapter_config.json" in meta["files"]

    other = nn.ModuleDict({"emb": nn.Embedding(11, 4), "head": nn.Linear(4, 11, bias=False)})
    load_checkpoint(ckpt, model=other, load_model_fn=load_adapter, restore_rng=False)
    assert torch.equal(other["emb"].weight, emb.weight) and torch.equal(other["head"].weight, emb.weight)
    assert torch.equal(loaded["lora_A"], torch.full((2, 4), 0.5))


def test_missing_part_raises_instead_of_silently_restarting(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, model_state=nn.Linear(2, 2).state_dict())
    with pytest.raises(FileNotFoundError, match="optimizer.pt"):
        load_checkpoint(ckpt, optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step-00000099")
