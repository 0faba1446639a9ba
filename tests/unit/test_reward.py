"""Reward model pieces: Bradley-Terry loss, one-pass pair scoring, padding, normalisation, evaluation math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from prefopt.batching import TokenizedPair, collate_grouped, collate_left, collate_pairs
from prefopt.data import testbed
from prefopt.data.types import Comparison, Post
from prefopt.models.heads import ScalarHeadModel
from prefopt.reward.evaluate import (
    accuracy,
    accuracy_by_confidence,
    calibration,
    evaluate_scores,
    fact_check,
    flat_metrics,
    gold_agreement,
    length_bias,
    reliability_plot,
)
from prefopt.reward.train import (
    bradley_terry_loss,
    pair_rewards,
    score_pairs,
    score_sequences,
    set_reference_bias,
    split_by_post,
)

PAD = 0


def _tiny_rm(seed: int = 0) -> ScalarHeadModel:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, tie_word_embeddings=True, pad_token_id=PAD,
    )  # fmt: skip
    return ScalarHeadModel(Qwen3ForCausalLM(cfg)).eval()


def _pairs(seed: int = 0, n: int = 3) -> list[tuple[TokenizedPair, TokenizedPair]]:
    """Random pairs sharing a prompt, with different completion lengths (so padding differs per row)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(2, 40, (3 + i,), generator=g).tolist()
        a = torch.randint(2, 40, (2 + 2 * i,), generator=g).tolist() + [1]  # 1 plays EOS
        b = torch.randint(2, 40, (5 - i,), generator=g).tolist() + [1]
        out.append((TokenizedPair(prompt, a), TokenizedPair(prompt, b)))
    return out


def test_bradley_terry_loss_hand_computed():
    r_c = torch.tensor([2.0, 0.0, -1.0, 30.0])
    r_r = torch.tensor([0.0, 0.0, 1.0, -30.0])
    # -log sigmoid(m) = log(1 + exp(-m)): m = 2, 0, -2, 60
    expected = [
        math.log(1 + math.exp(-2)),
        math.log(2.0),
        math.log(1 + math.exp(2)),
        math.log1p(math.exp(-60)),
    ]
    assert bradley_terry_loss(r_c, r_r).tolist() == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert expected[:3] == pytest.approx([0.126928, 0.693147, 2.126928], abs=1e-6)
    # gradient of the mean loss w.r.t. r_c is -(1 - sigmoid(m)) / B
    r_c.requires_grad_(True)
    bradley_terry_loss(r_c, r_r).mean().backward()
    m = torch.tensor([2.0, 0.0, -2.0, 60.0])
    assert torch.allclose(r_c.grad, -(1 - torch.sigmoid(m)) / 4)


def test_pair_rewards_one_forward_equals_separate_scoring():
    model, pairs = _tiny_rm(), _pairs()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        r_c, r_r = pair_rewards(model, collate_pairs(pairs, PAD))
        assert len(calls) == 1  # chosen and rejected rows went through ONE forward pass
        for k, (c, r) in enumerate(pairs):
            for row, reward in ((c, r_c[k]), (r, r_r[k])):
                ids = torch.tensor([row.prompt + row.completion])
                alone = model.score(ids, torch.ones_like(ids))  # unpadded, bias 0
                assert torch.allclose(reward, alone[0], atol=1e-5)


def test_reward_at_eos_same_under_left_and_right_padding():
    model, pairs = _tiny_rm(1), _pairs(1, n=4)
    seqs = [p.prompt + p.completion for pair in pairs for p in pair]
    lengths = {len(s) for s in seqs}
    assert len(lengths) > 1  # padding really differs between rows
    right = collate_pairs(pairs, PAD)
    left = collate_left(
        [c.prompt + c.completion for c, _ in pairs] + [r.prompt + r.completion for _, r in pairs], PAD
    )
    assert left["attention_mask"][:, 0].min() == 0 and right["attention_mask"][:, -1].min() == 0
    with torch.no_grad():
        s_right = model.score(right["input_ids"], right["attention_mask"])
        s_left = model.score(left["input_ids"], left["attention_mask"])
    assert torch.allclose(s_right, s_left, atol=1e-5)
    # and the value read is the one at the EOS: the row's last real token
    with torch.no_grad():
        values = model(right["input_ids"], right["attention_mask"])
    last = right["attention_mask"].sum(1) - 1
    assert (right["input_ids"][torch.arange(len(last)), last] == 1).all()
    assert torch.allclose(s_right, values[torch.arange(len(last)), last])


def test_normalisation_makes_reference_mean_zero():
    model = _tiny_rm(2)
    refs = [p for pair in _pairs(3, n=5) for p in pair]
    with torch.no_grad():  # independent computation: each reference scored alone, bias 0
        raw = [float(model.score(*_alone(r))) for r in refs]
    bias = set_reference_bias(model, refs, PAD, micro=3)
    assert bias == pytest.approx(sum(raw) / len(raw), abs=1e-5)
    assert float(model.bias) == pytest.approx(bias)
    after = score_sequences(model, refs, PAD, micro=4)
    assert abs(sum(after) / len(after)) < 1e-4
    assert after == pytest.approx([r - bias for r in raw], abs=1e-5)


def _alone(row: TokenizedPair) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([row.prompt + row.completion])
    return ids, torch.ones_like(ids)


def test_accuracy_confidence_and_gold_agreement_hand_worked():
    r_c, r_r = [1.0, 0.0, 2.0, -1.0], [0.0, 0.0, 3.0, -2.0]
    assert accuracy(r_c, r_r) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    by = accuracy_by_confidence(r_c, r_r, [9, 9, 3, None])
    assert by == {"3": {"n": 1, "accuracy": 0.0}, "9": {"n": 2, "accuracy": 0.75}}
    assert accuracy_by_confidence(r_c, r_r, [None] * 4) == {}
    # gold prefers: chosen (model agrees), rejected (model ties: one half), tie (left out), chosen (agrees)
    g = gold_agreement(r_c, r_r, [0.9, 0.1, 0.5, 0.7], [0.2, 0.3, 0.5, 0.6])
    assert g == {"gold_agreement": pytest.approx((1 + 0.5 + 1) / 3), "gold_ties": 1}
    g = gold_agreement([1.0, 0.0], [0.0, 1.0], [0.1, 0.1], [0.2, 0.2])  # gold prefers rejected twice
    assert g["gold_agreement"] == 0.5


def test_calibration_hand_worked():
    # margins 0 and ln 3 -> p = 0.5 and 0.75; both orders counted: (0.5,1) (0.5,0) (0.75,1) (0.25,0)
    cal = calibration([0.0, math.log(3.0)], [0.0, 0.0], n_bins=4)
    bins = cal["bins"]
    assert [b["n"] for b in bins] == [0, 1, 2, 1]
    assert bins[1]["predicted"] == pytest.approx(0.25) and bins[1]["observed"] == 0.0
    assert bins[2]["predicted"] == pytest.approx(0.5) and bins[2]["observed"] == 0.5
    assert bins[3]["predicted"] == pytest.approx(0.75) and bins[3]["observed"] == 1.0
    assert bins[0]["predicted"] is None
    assert cal["ece"] == pytest.approx(0.25 * 0.25 + 0.25 * 0.25)


def test_length_bias_against_numpy():
    rng = np.random.default_rng(0)
    r_c, r_r = rng.normal(size=20).tolist(), rng.normal(size=20).tolist()
    l_c, l_r = rng.integers(5, 40, 20).tolist(), rng.integers(5, 40, 20).tolist()
    out = length_bias(r_c, r_r, l_c, l_r)
    assert out["corr_reward_length"] == pytest.approx(np.corrcoef(r_c + r_r, l_c + l_r)[0, 1])
    keep = [i for i in range(20) if l_c[i] != l_r[i]]
    assert out["labels_prefer_longer"] == pytest.approx(np.mean([l_c[i] > l_r[i] for i in keep]))
    assert out["model_prefers_longer"] == pytest.approx(
        np.mean([(r_c[i] > r_r[i]) == (l_c[i] > l_r[i]) for i in keep])
    )


def test_testbed_gold_rewards_reach_exactly_the_noise_ceiling(tmp_path):
    comps = testbed.load_comparisons("valid", n=60)
    g_c = [testbed.gold_score(c.post, c.chosen) for c in comps]
    g_r = [testbed.gold_score(c.post, c.rejected) for c in comps]
    report = evaluate_scores(g_c, g_r, comps, [1] * 60, [1] * 60, n_bins=5)
    # a reward model equal to gold IS the noiseless labeler: its accuracy is the ceiling, agreement 1
    assert report["testbed"]["noise_ceiling"] == pytest.approx(testbed.noise_ceiling(comps))
    assert report["accuracy"] == pytest.approx(report["testbed"]["noise_ceiling"])
    assert report["testbed"]["gold_agreement"] == 1.0
    assert 0.6 < report["accuracy"] < 1.0  # noisy labels: the ceiling is below 1
    png = reliability_plot(report["calibration"], tmp_path / "rel.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fact_check_hand_worked_and_flattened():
    acc = fact_check([1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0], ["event", "event", "age", "age"])
    assert acc == {"event": 0.5, "age": 0.25, "all": 0.375}  # the age tie counts one half
    report = {"accuracy": 0.7, "mean_margin": 0.1, "calibration": {"ece": 0.0}, "length": {}}
    report |= {"accuracy_by_confidence": {}, "testbed": {"noise_ceiling": 0.8, "fact_check": acc}}
    flat = flat_metrics(report)
    assert flat["eval/testbed/noise_ceiling"] == 0.8 and flat["eval/testbed/fact_check/age"] == 0.25


def test_gold_agreement_on_wrong_fact_pairs_counts_only_those_pairs():
    comps = testbed.load_comparisons("valid", n=300)
    wrong = ["wrong_fact" in (c.meta["quality_chosen"], c.meta["quality_rejected"]) for c in comps]
    g = [(c.meta["gold_chosen"], c.meta["gold_rejected"]) for c in comps]
    # agree with gold everywhere except on the wrong-fact pairs, where the order is reversed
    r_c = [gr if w else gc for (gc, gr), w in zip(g, wrong, strict=True)]
    r_r = [gc if w else gr for (gc, gr), w in zip(g, wrong, strict=True)]
    t = evaluate_scores(r_c, r_r, comps, [1] * 300, [1] * 300)["testbed"]
    untied = [(gc != gr, w) for (gc, gr), w in zip(g, wrong, strict=True)]
    assert sum(w for u, w in untied if u) > 20  # the mix has wrong-fact pairs (8% of writers)
    assert t["gold_agreement_wrong_fact_pairs"] == 0.0
    assert t["gold_agreement"] == pytest.approx(
        sum(u and not w for u, w in untied) / sum(u for u, _ in untied)
    )


def test_real_data_report_has_no_testbed_section():
    post = Post("sub", "title", "body", id="t3_x")
    comps = [Comparison(post, "a", "b", confidence=7), Comparison(post, "c", "d", confidence=2)]
    report = evaluate_scores([1.0, 0.0], [0.0, 1.0], comps, [3, 4], [5, 2])
    assert "testbed" not in report
    assert report["accuracy_by_confidence"] == {
        "2": {"n": 1, "accuracy": 0.0},
        "7": {"n": 1, "accuracy": 1.0},
    }
    assert report["mean_margin"] == 0.0


def test_split_by_post_keeps_each_post_on_one_side():
    posts = [Post("s", "t", f"body {i}", id=f"p{i}") for i in range(200)]
    rows = [Comparison(p, "a", "b") for p in posts for _ in range(3)]
    train, valid = split_by_post(rows, 0.25, seed=0)
    assert len(train) + len(valid) == 600
    assert not {c.post.id for c in train} & {c.post.id for c in valid}
    assert 0.15 < len(valid) / 600 < 0.35
    assert split_by_post(rows, 0.25, seed=0) == (train, valid)  # deterministic
    assert split_by_post(rows, 0.25, seed=1) != (train, valid)


def _post_pairs() -> list[tuple[TokenizedPair, TokenizedPair]]:
    """Comparisons as OpenAI's data has them: one post's three summaries in three comparisons (each
    summary twice, once chosen and once rejected), two more posts, and one pair whose prompts differ."""
    (c0, r0), (c1, r1), (c2, r2) = _pairs(seed=3, n=3)
    third = TokenizedPair(c0.prompt, [7, 8, 9, 1])
    odd = TokenizedPair(c2.prompt + [5], r2.completion)
    return [(c0, r0), (r0, third), (third, c0), (c1, r1), (c2, odd)]


def test_grouped_forward_equals_scoring_each_sequence_in_full():
    """Each distinct prompt once, each distinct summary once on its prompt's KV cache: the same rewards
    and gradients as every sequence of every comparison in full, also with widths rounded up to 16."""
    pairs = _post_pairs()
    grouped = collate_grouped(pairs, PAD)
    assert grouped["input_ids"].shape[0] == 4  # 3 posts + the odd prompt
    assert grouped["completion_ids"].shape[0] == 7  # 3 + 2 + 2 distinct (prompt, summary) rows, not 10
    assert grouped["chosen"].tolist() == [0, 1, 2, 3, 5] and grouped["rejected"].tolist() == [1, 2, 0, 4, 6]
    wide = collate_grouped(pairs, PAD, multiple=16)
    assert wide["input_ids"].shape[1] % 16 == 0 and wide["completion_ids"].shape[1] % 16 == 0
    runs = []
    for batch in (collate_pairs(pairs, PAD), grouped, wide, collate_pairs(pairs, PAD, multiple=16)):
        model = _tiny_rm(seed=1)
        r_c, r_r = pair_rewards(model, batch)
        bradley_terry_loss(r_c, r_r).mean().backward()
        runs.append((r_c.detach(), r_r.detach(), [p.grad.clone() for p in model.trunk.parameters()]))
    (c1, r1, g1), *others = runs
    for c2, r2, g2 in others:
        torch.testing.assert_close(c2, c1, atol=1e-5, rtol=0)
        torch.testing.assert_close(r2, r1, atol=1e-5, rtol=0)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_score_pairs_equals_scoring_each_summary_alone():
    pairs = _post_pairs()
    model = _tiny_rm(seed=2).eval()
    model.set_bias(0.25)
    r_c, r_r = score_pairs(model, pairs, PAD, micro=2)  # micro-batches cut through a post's comparisons
    expected = score_sequences(model, [c for c, _ in pairs] + [r for _, r in pairs], PAD, micro=3)
    np.testing.assert_allclose(r_c + r_r, expected, atol=1e-5)
