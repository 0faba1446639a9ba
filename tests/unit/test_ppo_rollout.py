"""Rollout.without_pad_columns: a micro-batch without its all-padding prompt columns gives the same
log-probs and values (positions count real tokens only), and is narrower."""

import copy

import torch

from prefopt.models.roles import SeparateRoles
from prefopt.ppo.rollout import Rollout, response_logprobs, response_values

PAD = 0


def _roles(tiny_qwen3) -> SeparateRoles:
    lm = tiny_qwen3(vocab_size=50)
    value, reward = copy.deepcopy(lm.model), copy.deepcopy(lm.model)
    heads = [torch.nn.Linear(32, 1) for _ in range(2)]
    return SeparateRoles(lm, copy.deepcopy(lm), value, heads[0], reward, heads[1], 0.0)


def _rollout(prompt_lengths: list[int], width: int, r: int = 5) -> Rollout:
    g = torch.Generator().manual_seed(1)
    b = len(prompt_lengths)
    queries = torch.full((b, width), PAD)
    qmask = torch.zeros(b, width, dtype=torch.long)
    for i, n in enumerate(prompt_lengths):  # left padding
        queries[i, width - n :] = torch.randint(1, 50, (n,), generator=g)
        qmask[i, width - n :] = 1
    responses = torch.randint(1, 50, (b, r), generator=g)
    rmask = torch.ones(b, r, dtype=torch.bool)
    rmask[0, 3:] = False
    zeros = torch.zeros(b, r)
    return Rollout(
        queries, qmask, responses, rmask, zeros, zeros, zeros, zeros[:, 0], zeros[:, 0], rmask[:, -1]
    )


def test_trimmed_micro_batch_gives_the_same_logprobs_and_values(tiny_qwen3):
    roles = _roles(tiny_qwen3)
    ro = _rollout([4, 6, 3], width=11)  # 5 columns are padding in every row
    trimmed = ro.without_pad_columns()
    assert trimmed.queries.shape == (3, 6) and trimmed.responses.shape == ro.responses.shape
    with torch.no_grad():
        lp_full, ent_full = response_logprobs(roles, "policy", ro, 0.7, with_entropy=True)
        lp_trim, ent_trim = response_logprobs(roles, "policy", trimmed, 0.7, with_entropy=True)
        torch.testing.assert_close(lp_trim, lp_full, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent_trim, ent_full, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            response_values(roles, trimmed), response_values(roles, ro), atol=1e-5, rtol=0
        )


def test_trimmed_width_stays_a_multiple_and_outputs_are_unchanged(tiny_qwen3):
    roles = _roles(tiny_qwen3)
    ro = _rollout([4, 6, 3], width=11)  # 6 real columns at most
    for multiple, width in ((4, 8), (8, 8), (16, 11)):  # 16 > 11: nothing can be dropped
        trimmed = ro.without_pad_columns(multiple)
        assert trimmed.queries.shape[1] == width
        with torch.no_grad():
            torch.testing.assert_close(
                response_logprobs(roles, "policy", trimmed, 0.7), response_logprobs(roles, "policy", ro, 0.7),
                atol=1e-5, rtol=0,
            )  # fmt: skip


def test_without_pad_columns_keeps_a_full_width_batch():
    ro = _rollout([4, 6], width=6)
    assert ro.without_pad_columns() is ro


def test_collect_gives_the_fixed_score_to_responses_without_eos(tiny_qwen3):
    """No EOS in the budget -> `missing_eos_score` replaces the reward model's score (kept as raw_scores)."""
    from prefopt.models.roles import reward_score
    from prefopt.ppo.rollout import collect

    roles = _roles(tiny_qwen3)
    ro = _rollout([4, 6, 3], width=6)
    kw = dict(response_length=5, temperature=0.7, pad_id=PAD, forward_batch=2)
    torch.manual_seed(0)
    out = collect(
        roles, ro.queries, ro.query_mask, eos_id=999, missing_eos_score=-1.0, **kw
    )  # 999: never sampled
    assert not out.has_eos.any() and out.response_mask.all()
    assert torch.equal(out.scores, torch.full((3,), -1.0))
    with torch.no_grad():
        expected = reward_score(roles, out.sequences, out.sequence_mask)
    torch.testing.assert_close(out.raw_scores, expected, atol=1e-5, rtol=0)
    assert not torch.equal(out.raw_scores, out.scores)
    torch.manual_seed(0)
    kept = collect(roles, ro.queries, ro.query_mask, eos_id=999, missing_eos_score=None, **kw)
    assert torch.equal(kept.scores, kept.raw_scores)
