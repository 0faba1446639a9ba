"""The reward stage end to end on tiny models: LoRA trains only adapter + head, exact resume after a kill,
the saved model loads back (merged, and as a named adapter for PPO), and real TL;DR comparisons run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen3Config, Qwen3ForCausalLM

import prefopt.reward.train as rt
from prefopt.batching import collate_sft
from prefopt.config import PeftConfig, build_config
from prefopt.data.testbed import corpus
from prefopt.data.testbed_writers import FACT_SLOTS
from prefopt.models.adapters import apply_peft, load_merged_policy, save_policy
from prefopt.models.load import load_tokenizer
from prefopt.models.tiny_base import train_tokenizer
from prefopt.reward import fact_probe
from prefopt.reward.model import load_reward_adapter_into, load_reward_model
from prefopt.tracking import read_metrics

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TLDR = DATA / "tldr"
QWEN_TOK = DATA / "qwen-tokenizer"
PREFS = TLDR / "openai_comparisons_valid_last10k.trl_tldr_preference_prompt_chosen_rejected.jsonl"
RAW727 = TLDR / "openai_comparisons_valid_overlap727.openai_raw_schema.jsonl"
SFT_FILE = TLDR / "tldr_valid_1945.trl_prompt_completion.jsonl"


def _tiny_qwen3(tok, seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return Qwen3ForCausalLM(cfg)


def _fake_sft_run(root: Path, name: str, tok, *, lora_sft: bool) -> Path:
    """`<root>/<name>/sft/model` as the SFT stage would leave it (a LoRA with a non-zero update, or full)."""
    base = root / "base"
    if not (base / "config.json").is_file():
        _tiny_qwen3(tok).save_pretrained(base)
        tok.save_pretrained(base)
    model = _tiny_qwen3(tok)
    method = "lora" if lora_sft else "none"
    model = apply_peft(model, PeftConfig(method=method, r=4))
    if lora_sft:
        with torch.no_grad():  # a non-zero SFT update, so "merged" differs from the base
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05)
    save_policy(model, root / name / "sft" / "model", PeftConfig(method=method, r=4), str(base), tok)
    return root / name


def _cfg(root: Path, name: str, **sections) -> object:
    data = {
        "output_dir": str(root),
        "name": name,
        "seed": 0,
        "peft": {"method": "lora", "r": 4},
        "data": {"limit_train": 24, "limit_eval": 24, "max_prompt_tokens": 128, "max_summary_tokens": 32},
        "reward": {
            "lr": 3e-3,
            "batch_size": 4,
            "micro_batch_size": 2,
            "n_normalise": 12,
            "log_every": 2,
            "save_every": 2,
            "warmup_ratio": 0.0,
        },
    }
    for key, value in sections.items():
        data[key] = data.get(key, {}) | value
    return build_config(data)


@pytest.fixture(scope="module")
def testbed_tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus(200), 1000).save_pretrained(folder)
    return load_tokenizer(str(folder))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, testbed_tok):
    """One uninterrupted LoRA reward run on the testbed; the model it trained is spied on in memory."""
    root = tmp_path_factory.mktemp("runs")
    _fake_sft_run(root, "full", testbed_tok, lora_sft=True)
    spy = {}
    real_build = rt.build_reward_model

    def spying_build(*args, **kwargs):
        model, wrapper = real_build(*args, **kwargs)
        spy["model"] = model
        spy["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model, wrapper

    rt.build_reward_model = spying_build
    try:
        out = rt.train(_cfg(root, "full"))
    finally:
        rt.build_reward_model = real_build
    return root, out, spy


def test_lora_trains_adapter_and_head_only(lora_run):
    _, out, spy = lora_run
    model, before = spy["model"], spy["before"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    lora = {n for n in before if "lora_" in n}
    assert lora and "head.weight" in changed
    assert {n for n in lora if "lora_B" in n} <= changed  # B starts at zero: it moved
    assert changed <= lora | {"head.weight"}  # every base (SFT-merged) weight is untouched
    # the loss sees only r_c - r_r, so the head's own bias has zero gradient in exact arithmetic: it is
    # frozen (Adam would turn float rounding into lr-sized steps); the stored normalising bias, set after
    # training, is what moves the scale
    assert "head.bias" not in changed and not model.head.bias.requires_grad
    assert len(before) > len(lora) + 2
    files = {p.name for p in (out / "model").iterdir()}
    assert {"prefopt.json", "adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= files
    meta = json.loads((out / "model" / "prefopt.json").read_text())
    assert meta["kind"] == "reward" and meta["method"] == "lora"
    assert meta["bias"] == pytest.approx(float(model.bias))


def test_metrics_and_eval_report(lora_run):
    _, out, _ = lora_run
    records = read_metrics(out)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]  # 24 pairs / 4 per step
    assert all(0 <= r["train/accuracy"] <= 1 and r["train/loss"] > 0 for r in train)
    assert all("train/margin" in r for r in train)
    report = json.loads((out / "eval.json").read_text())
    assert report["n"] == 24 and 0 <= report["accuracy"] <= 1
    assert 0.5 < report["testbed"]["noise_ceiling"] <= 1
    assert 0 <= report["testbed"]["gold_agreement"] <= 1
    assert 0 <= report["testbed"]["gold_agreement_wrong_fact_pairs"] <= 1
    checks = report["testbed"]["fact_check"]  # 100 posts x 5 one-fact swaps, scored by the reward model
    assert set(checks) == {*FACT_SLOTS, "all"} and all(0 <= v <= 1 for v in checks.values())
    assert records[-1]["eval/testbed/fact_check/all"] == pytest.approx(checks["all"])
    assert sum(b["n"] for b in report["calibration"]["bins"]) == 48
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "DONE.json").is_file()


def test_fact_probe_scores_the_swaps_with_the_sft_policy_and_the_reward_model(lora_run, capsys):
    root, out, _ = lora_run
    rows = fact_probe.main([str(root / "full"), "--posts", "3"])
    assert set(rows) == {"SFT log-likelihood", "reward model"}
    for acc in rows.values():  # 3 pairs per slot: each rate is a multiple of 1/6 (ties count one half)
        assert set(acc) == {*FACT_SLOTS, "all"}
        per_slot = [acc[s] for s in FACT_SLOTS]
        assert all(0 <= v <= 1 and (6 * v) == pytest.approx(round(6 * v)) for v in per_slot)
        assert acc["all"] == pytest.approx(sum(per_slot) / len(per_slot))  # equal pairs per slot
    assert "SFT log-likelihood" in capsys.readouterr().out


def test_saved_model_loads_merged_and_as_named_adapter(lora_run, testbed_tok):
    root, out, spy = lora_run
    tok = testbed_tok
    refs = rt.load_sft("testbed", "train", limit=12)
    seqs = rt.tokenize_summaries([r.post for r in refs], [r.summary for r in refs], tok, 128, 32)
    trained = spy["model"].eval()
    expected = rt.score_sequences(trained, seqs, tok.pad_token_id, micro=4)
    assert abs(sum(expected) / len(expected)) < 1e-4  # normalised on these very references

    loaded = load_reward_model(out, tok, device="cpu")  # `<run>/reward` works as well as `.../model`
    assert rt.score_sequences(loaded, seqs, tok.pad_token_id, micro=5) == pytest.approx(expected, abs=1e-4)

    # PPO's shared base: the SFT policy merged, a policy adapter "default", the reward loaded as "reward"
    from peft import LoraConfig, get_peft_model

    sft = load_merged_policy(root / "full" / "sft" / "model", tok, device="cpu")
    peft_model = get_peft_model(sft, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="default")
    head, bias = load_reward_adapter_into(peft_model, out / "model", adapter_name="reward")
    assert not any(p.requires_grad for p in head.parameters())
    peft_model.base_model.set_adapter("reward")
    batch = collate_sft(seqs, tok.pad_token_id)
    with torch.no_grad():
        h = peft_model.base_model.model.model(**batch_inputs(batch)).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    shared = head(h[torch.arange(len(seqs)), last]).squeeze(-1) - bias
    assert shared.tolist() == pytest.approx(expected, abs=1e-4)
    # the value model starts as a trainable copy of the reward adapter + head
    v_head, _ = load_reward_adapter_into(peft_model, out, adapter_name="value", trainable=True)
    assert all(p.requires_grad for p in v_head.parameters())
    assert any(p.requires_grad for n, p in peft_model.named_parameters() if ".value." in n)
    assert torch.equal(v_head.weight, head.weight)


def test_full_finetuning_saves_a_whole_trunk_that_loads_back(tmp_path, testbed_tok):
    tok = testbed_tok
    _fake_sft_run(tmp_path, "full-ft", tok, lora_sft=False)
    cfg = _cfg(tmp_path, "full-ft", peft={"method": "none"}, data={"limit_train": 8, "limit_eval": 8})
    out = rt.train(cfg)
    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    assert json.loads((model_dir / "prefopt.json").read_text())["method"] == "none"
    refs = rt.load_sft("testbed", "train", limit=12)  # the references the bias was set on
    seqs = rt.tokenize_summaries([r.post for r in refs], [r.summary for r in refs], tok, 128, 32)
    loaded = load_reward_model(model_dir, tok, device="cpu")
    scores = rt.score_sequences(loaded, seqs, tok.pad_token_id, micro=4)
    assert abs(sum(scores) / len(scores)) < 1e-4
    # the trunk really was trained: it differs from the SFT policy's
    sft = load_merged_policy(tmp_path / "full-ft" / "sft" / "model", tok, device="cpu")
    w = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(loaded.trunk.state_dict()[w], sft.model.state_dict()[w])
    with pytest.raises(ValueError, match="no adapter to share"):
        load_reward_adapter_into(None, model_dir)


def batch_inputs(batch):
    from prefopt.batching import position_ids

    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": position_ids(batch["attention_mask"]),
    }


def test_killed_run_resumes_to_the_same_weights(lora_run, testbed_tok, capsys):
    root, full, _ = lora_run
    _fake_sft_run(root, "killed", testbed_tok, lora_sft=True)
    cfg = _cfg(root, "killed")
    real_save = rt.save_ckpt

    def save_then_die(st, model, opt, sched, step, keep_last):
        real_save(st, model, opt, sched, step, keep_last)
        if step == 4:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")

    rt.save_ckpt = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            rt.train(cfg)
    finally:
        rt.save_ckpt = real_save
    capsys.readouterr()
    out = rt.train(cfg)  # resumes from step 4
    assert "resumed from step-00000004 (step 4)" in capsys.readouterr().out
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a, b = load_file(full / "model" / name), load_file(out / "model" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    meta_a = json.loads((full / "model" / "prefopt.json").read_text())
    meta_b = json.loads((out / "model" / "prefopt.json").read_text())
    assert meta_a["bias"] == meta_b["bias"]
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == [2, 4, 6]


# ---------------------------------------------------------------- real TL;DR comparisons, real Qwen tokenizer


@pytest.fixture(scope="module")
def qwen_tok():
    if not QWEN_TOK.is_dir() or not PREFS.is_file():
        pytest.skip(f"shared test data not found under {DATA}")
    return load_tokenizer(str(QWEN_TOK), eos_token="<|endoftext|>")


@pytest.mark.parametrize(
    ("source", "extra"),
    [(PREFS, {}), (RAW727, {"fill_missing": {"subreddit": "", "title": ""}})],
    ids=["trl-preference-10k", "openai-raw-727"],
)
def test_real_comparisons_run(tmp_path, qwen_tok, source, extra):
    _fake_sft_run(tmp_path, "real", qwen_tok, lora_sft=False)
    cfg = _cfg(
        tmp_path,
        "real",
        data={
            "comparisons_source": str(source),
            "sft_source": str(SFT_FILE),
            "limit_train": 8,
            "limit_eval": 16,
            "max_prompt_tokens": 96,
            "max_summary_tokens": 40,
        },
        reward={"n_normalise": 8, "save_every": 0, **extra},
    )
    out = rt.train(cfg)
    report = json.loads((out / "eval.json").read_text())
    print(f"{source.name}: held-out accuracy {report['accuracy']:.3f} on {report['n']} pairs")
    assert report["n"] == 16 and 0 <= report["accuracy"] <= 1
    assert "testbed" not in report
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == [2]
    # `prefopt reward score MODEL FILE`: the first rows of a real SFT file (trl prompt/completion layout)
    head = tmp_path / "five.jsonl"
    head.write_text("".join(SFT_FILE.read_text().splitlines(keepends=True)[:5]))
    scores = rt.score_file(out, head, tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(scores) == 5 and [r["reward"] for r in rows] == scores
