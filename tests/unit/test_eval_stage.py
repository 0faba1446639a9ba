"""The evaluation stage end to end on a tiny run folder (testbed posts, random tiny Qwen3 policies), with
its KL, reward scores and win rates checked against independent unbatched computations."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from prefopt.batching import prompt_ids
from prefopt.config import PeftConfig, build_config
from prefopt.data.load import load_sft
from prefopt.data.testbed import corpus, gold_score
from prefopt.eval import evaluate as E
from prefopt.eval.text_metrics import win_rate
from prefopt.models.adapters import save_policy
from prefopt.models.tiny_base import train_tokenizer

N_POSTS, BUDGET = 6, 10


def _tiny_lm(tok, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # larger logits, so two random policies differ by a KL of ~1.5 nats per response
        model.model.embed_tokens.weight.mul_(5)
    return model.eval()


def _config(tmp_path, **eval_kw):
    return build_config(
        {
            "name": "run",
            "output_dir": str(tmp_path),
            "model": {"dtype": "float32"},
            "data": {"sft_source": "testbed", "max_prompt_tokens": 200},
            "ppo": {"response_length": BUDGET},
            "eval": {"n_posts": N_POSTS, "bootstrap": 200, "temperature": 0.0, **eval_kw},
        }
    )


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus(150), vocab_size=400)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    """<run>/sft/model, <run>/ppo/model (another random LM), <run>/reward/model (SFT trunk + head)."""
    from prefopt.reward.model import build_reward_model, save_reward_model

    root = tmp_path_factory.mktemp("eval")
    run = root / "run"
    for stage, seed in (("sft", 0), ("ppo", 1)):
        folder = run / stage / "model"
        save_policy(_tiny_lm(tok, seed), folder, PeftConfig(method="none"), str(folder), tok)
    rm, _ = build_reward_model(
        run / "sft" / "model", tok, PeftConfig(method="none"), dtype="float32", device="cpu"
    )
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    rm.set_bias(0.25)
    save_reward_model(
        rm, run / "reward" / "model", peft_wrapper=None, base=run / "sft" / "model", tokenizer=tok
    )
    return run


@pytest.fixture(scope="module")
def evaluated(run_dir, tok):
    cfg = _config(run_dir.parent)
    out = E.run(cfg)
    results = json.loads((out / E.RESULTS).read_text())
    rows = [json.loads(line) for line in (out / E.SAMPLES).read_text().splitlines()]
    return cfg, out, results, rows


def _single_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log p(response tokens) from one unpadded forward pass with default positions."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def _greedy(model, prompt: list[int], budget: int, eos: int) -> list[int]:
    """Unbatched greedy decoding without a cache, cut after the first EOS."""
    ids = list(prompt)
    for _ in range(budget):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos:
            break
    return ids[len(prompt) :]


def test_stage_outputs_and_structure(evaluated):
    cfg, out, results, rows = evaluated
    assert (out / "DONE.json").is_file()
    assert results["n_posts"] == N_POSTS == len(rows) and results["testbed"] is True
    assert set(results["policies"]) == {"reference", "sft", "ppo"}
    for scorer in ("gold", "reward_model"):
        assert set(results["win_rates"][scorer]) == {"ppo_vs_reference", "sft_vs_reference", "ppo_vs_sft"}
    for e in results["win_rates"]["gold"].values():
        assert e["n"] == N_POSTS and e["lo"] <= e["value"] <= e["hi"]
    assert results["policies"]["sft"]["kl_to_sft"]["value"] == 0.0
    assert all(1 <= r["length"]["ppo"] <= BUDGET and 1 <= r["length"]["sft"] <= BUDGET for r in rows)


def test_kl_and_reward_match_unbatched_computations(evaluated, run_dir, tok):
    from prefopt.models.adapters import load_merged_policy
    from prefopt.reward.model import load_reward_model

    cfg, _, results, rows = evaluated
    examples = load_sft("testbed", "valid", limit=N_POSTS)
    sft = load_merged_policy(run_dir / "sft" / "model", tok, dtype="float32", device="cpu")
    ppo = load_merged_policy(run_dir / "ppo" / "model", tok, dtype="float32", device="cpu")
    rm = load_reward_model(run_dir / "reward" / "model", tok, "cpu", dtype="float32")
    kls = []
    for ex, row in zip(examples, rows, strict=True):
        prompt = prompt_ids(ex.post, tok, cfg.data.max_prompt_tokens)
        response = _greedy(ppo, prompt, BUDGET, tok.eos_token_id)
        assert row["ppo"] == tok.decode(response, skip_special_tokens=True).strip()
        assert row["length"]["ppo"] == len(response) and row["eos"]["ppo"] == (
            response[-1] == tok.eos_token_id
        )
        kl = float((_single_logprobs(ppo, prompt, response) - _single_logprobs(sft, prompt, response)).sum())
        assert row["kl"]["ppo"] == pytest.approx(kl, abs=1e-3)
        kls.append(kl)
        with torch.no_grad():
            score = float(
                rm.score(torch.tensor([prompt + response]), torch.ones(1, len(prompt) + len(response)))
            )
        assert row["reward"]["ppo"] == pytest.approx(score, abs=1e-4)
        assert row["gold"]["ppo"] == pytest.approx(gold_score(ex.post, row["ppo"]))
    assert len(kls) == N_POSTS and len({round(k, 3) for k in kls}) > 1
    assert results["policies"]["ppo"]["kl_to_sft"]["value"] == pytest.approx(
        sum(r["kl"]["ppo"] for r in rows) / N_POSTS
    )


def test_win_rates_and_means_agree_with_the_rows(evaluated):
    _, _, results, rows = evaluated
    for scorer, label in (("gold", "gold"), ("reward", "reward_model")):
        for a, b in E.PAIRS:
            expected = win_rate([r[scorer][a] for r in rows], [r[scorer][b] for r in rows])
            assert results["win_rates"][label][f"{a}_vs_{b}"]["value"] == pytest.approx(expected)
        for col in ("reference", "sft", "ppo"):
            mean = sum(r[scorer][col] for r in rows) / N_POSTS
            assert results["policies"][col][scorer]["value"] == pytest.approx(mean)
    gold_ref = [gold_score(ex.post, ex.summary) for ex in load_sft("testbed", "valid", limit=N_POSTS)]
    assert [r["gold"]["reference"] for r in rows] == pytest.approx(gold_ref)


def test_kl_estimates_by_hand():
    k1, k3 = E.kl_estimates([[-1.0, -2.0]], [[-1.5, -1.0]])
    # log r = ref - pi = [-0.5, 1.0]; k1 = -sum = -0.5; k3 = sum(e^x - 1 - x)
    assert k1 == pytest.approx([-0.5])
    assert k3 == pytest.approx([(2.718281828**-0.5 - 1 + 0.5) + (2.718281828 - 1 - 1.0)])


def test_batched_logprobs_equal_unpadded_ones(run_dir, tok):
    from prefopt.models.adapters import load_merged_policy

    model = load_merged_policy(run_dir / "ppo" / "model", tok, dtype="float32", device="cpu")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # different lengths: left padding matters
    responses = [[20, 21, 0], [22], [23, 24, 25, 26]]
    batched = E.response_logprobs(model, prompts, responses, tok.pad_token_id, batch_size=3)
    for p, r, got in zip(prompts, responses, batched, strict=True):
        assert got == pytest.approx(_single_logprobs(model, p, r).tolist(), abs=1e-4)


def test_sft_only_run_and_a_judge(tmp_path, run_dir, monkeypatch):
    """Without ppo/model only SFT is evaluated; a (fake) judge that prefers the longer summary gives
    exactly the win rate counted from the texts, whatever order it was shown them in."""
    import shutil

    from prefopt.eval import judge as J

    run = tmp_path / "run"
    for stage in ("sft", "reward"):
        shutil.copytree(run_dir / stage / "model", run / stage / "model")
    (run / "reward" / "model" / "prefopt.json").write_text(
        (run_dir / "reward" / "model" / "prefopt.json").read_text().replace(str(run_dir), str(run))
    )

    def longer(prompt: str) -> str:
        a, b = re.search(r"Summary A:\n(.*)\n\nSummary B:\n(.*)\n\nFIRST", prompt, re.S).groups()
        if len(a) == len(b):
            return "Comparison: the same length."  # no verdict: must count as a tie
        return "Comparison: longer.\nPreferred: " + ("A" if len(a) > len(b) else "B")

    monkeypatch.setattr(J, "make_judge", lambda spec: longer)
    cfg = _config(tmp_path, judge="http://127.0.0.1:9/v1")
    results = json.loads((E.run(cfg) / E.RESULTS).read_text())
    rows = [json.loads(line) for line in (cfg.run_dir / "eval" / E.SAMPLES).read_text().splitlines()]
    assert set(results["policies"]) == {"reference", "sft"}
    assert any("no PPO policy" in n for n in results["notes"])
    assert set(results["win_rates"]["gold"]) == {"sft_vs_reference"}
    outcomes = [float(len(r["sft"]) > len(r["reference"])) for r in rows]
    outcomes = [
        0.5 if len(r["sft"]) == len(r["reference"]) else o for r, o in zip(rows, outcomes, strict=True)
    ]
    expected = sum(outcomes) / N_POSTS
    assert results["win_rates"]["judge"]["sft_vs_reference"]["value"] == pytest.approx(expected)
    ties = sum(len(r["sft"]) == len(r["reference"]) for r in rows)
    assert results["judge_failures"] == {"sft_vs_reference": ties}
    assert [r["judge"]["sft_vs_reference"] for r in rows] == outcomes


def test_local_hf_judge_generates_and_an_unreadable_answer_is_a_tie(tmp_path, tok):
    from prefopt.eval import judge as J

    folder = tmp_path / "judge"
    _tiny_lm(tok, 3).save_pretrained(folder)
    tok.save_pretrained(folder)
    judge = J.make_judge(str(folder))
    assert isinstance(judge, J.LocalHFJudge)
    judge.max_new_tokens = 4
    answer = judge("Post:\nhello")
    assert isinstance(answer, str) and "Post:" not in answer  # only the new tokens come back
    res = J.judge_pairwise(judge, ["p", "q"], ["a", "b"], ["c", "d"], max_workers=1)
    assert res.outcomes == [0.5, 0.5] and res.failures == 2
