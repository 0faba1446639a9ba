"""prefopt.ppo.core against hand-worked examples, direct formulas and plain Python loops."""

import math

import numpy as np
import pytest
import torch

from prefopt.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_penalty,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten_rewards,
)

LN2 = math.log(2.0)

# --- KL estimators -------------------------------------------------------------------------------------


def test_kl_penalty_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # r = p_ref / p = 1/2
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(LN2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(-0.5 + LN2)
    assert kl_penalty(logp, ref, "mse").item() == pytest.approx(0.5 * LN2**2)
    assert kl_penalty(logp, ref, "abs").item() == pytest.approx(LN2)
    # the other direction: r = 2, k1 < 0 but k3, mse, abs stay positive
    assert kl_penalty(ref, logp, "k1").item() == pytest.approx(-LN2)
    assert kl_penalty(ref, logp, "k3").item() == pytest.approx(1.0 - LN2)
    with pytest.raises(ValueError, match="unknown KL"):
        kl_penalty(logp, ref, "k2")


def test_k1_and_k3_are_unbiased_estimates_of_kl_policy_to_ref():
    """E_{y~pi}[k(y)] = KL(pi || pi_ref), taken exactly over a 5-token vocabulary."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, generator=gen, dtype=torch.float64), -1)
    ref = torch.log_softmax(torch.randn(5, generator=gen, dtype=torch.float64), -1)
    exact = (logp.exp() * (logp - ref)).sum()
    for kind in ("k1", "k3"):
        expectation = (logp.exp() * kl_penalty(logp, ref, kind).double()).sum()
        assert expectation.item() == pytest.approx(exact.item(), rel=1e-6), kind


def test_nonnegative_estimators():
    gen = torch.Generator().manual_seed(1)
    logp, ref = 3 * torch.randn(200, generator=gen), 3 * torch.randn(200, generator=gen)
    assert (kl_penalty(logp, ref, "k1") < 0).any()
    for kind in ("k3", "mse", "abs"):
        assert (kl_penalty(logp, ref, kind) >= 0).all(), kind


# --- rewards -------------------------------------------------------------------------------------------


def test_per_token_rewards_score_at_last_real_token_of_each_length():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    logp = torch.full((3, 4), math.log(0.5))
    ref = torch.full((3, 4), math.log(0.25))  # k1 = ln 2 at every token
    logp[~mask] = float("-inf")  # padding garbage must not leak
    score = torch.tensor([1.0, -2.0, 3.0])
    beta = 0.1
    rewards, kl = per_token_rewards(score, logp, ref, mask, kl_coef=beta)
    p = -beta * LN2
    expected = torch.tensor([[p, p, p + 1.0, 0.0], [p - 2.0, 0.0, 0.0, 0.0], [p, p, p, p + 3.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, mask.float() * LN2)
    # the sum of a row's rewards is the score minus beta * the row's KL
    torch.testing.assert_close(rewards.sum(1), score - beta * kl.sum(1))


def test_per_token_rewards_k3_and_empty_row():
    mask = torch.tensor([[1, 1]], dtype=torch.bool)
    logp, ref = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 1.0]]))
    rewards, kl = per_token_rewards(torch.tensor([0.0]), logp, ref, mask, 1.0, kind="k3")
    torch.testing.assert_close(kl, torch.tensor([[-0.5 + LN2, 1.0 - LN2]]))
    torch.testing.assert_close(rewards, -kl)
    with pytest.raises(ValueError, match="no real token"):
        per_token_rewards(torch.tensor([0.0]), logp, ref, torch.zeros_like(mask), 1.0)


def test_whiten_rewards_keeps_mean_and_sign():
    rewards = torch.tensor([[0.5, 1.5, 9.0], [2.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    real = np.array([0.5, 1.5, 2.0])
    expected = (real - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8) + real.mean()
    out = whiten_rewards(rewards, mask)
    np.testing.assert_allclose(out[mask].numpy(), expected, rtol=1e-5)
    assert (out[~mask] == 0).all()


# --- GAE -----------------------------------------------------------------------------------------------


def test_gae_hand_worked_three_tokens():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # deltas: 0 + 0.6 - 0.5 = 0.1, 0 + 0.7 - 0.6 = 0.1, 1 + 0 - 0.7 = 0.3
    # A2 = 0.3; A1 = 0.1 + 0.95 * 0.3 = 0.385; A0 = 0.1 + 0.95 * 0.385 = 0.46575
    torch.testing.assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0]]))
    # lam = 1, gamma = 1: the return is the plain sum of future rewards
    _, ret_mc = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret_mc, torch.ones(1, 3))


def _gae_python(rewards, values, length, gamma, lam):
    """One response of `length` real tokens, as plain Python floats."""
    advantages = [0.0] * length
    running = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_python_loop_with_padding(gamma, lam):
    gen = torch.Generator().manual_seed(2)
    lengths = [5, 1, 3, 6]
    rewards, values = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    mask = torch.arange(6) < torch.tensor(lengths).unsqueeze(1)
    dirty_r = torch.where(mask, rewards, torch.full_like(rewards, 1e6))
    dirty_v = torch.where(mask, values, torch.full_like(values, float("nan")))
    adv, ret = gae(dirty_r, dirty_v, mask, gamma, lam)
    for b, n in enumerate(lengths):
        expected = _gae_python(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        assert adv[b, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert ret[b, :n].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[b, :n].tolist(), strict=True)], abs=1e-5
        )
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


# --- losses --------------------------------------------------------------------------------------------


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    gen = torch.Generator().manual_seed(3)
    old = torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    loss, stats = policy_loss(old.clone(), old, adv, mask)
    assert loss.item() == pytest.approx(-adv[mask].mean().item(), abs=1e-6)
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0 and stats["approx_kl_k2"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0 and stats["ratio_max"].item() == 1.0


def test_policy_loss_hand_worked_clipping_and_gradient():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 9.0]])  # the last one is padding
    old = torch.zeros(1, 4)
    logp = ratio.log().requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, stats = policy_loss(logp, old, adv, mask, clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    log_r = ratio[0, :3].log()
    assert stats["approx_kl"].item() == pytest.approx(((ratio[0, :3] - 1) - log_r).mean().item())
    assert stats["approx_kl_k2"].item() == pytest.approx((0.5 * log_r**2).mean().item())
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio; zero where the clipped term is active and at padding
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 3, 1.1 / 3, 0.0]]))


def test_value_loss_hand_worked():
    values = torch.tensor([[1.0, 0.0, 123.0]], requires_grad=True)  # the last one is padding
    old = torch.tensor([[0.5, 0.1, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 0: clipped prediction 0.7: max((1 - 2)^2, (0.7 - 2)^2) = 1.69; token 1: inside the clip range: 0
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.0) / 2)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)
    assert stats["value_mean"].item() == pytest.approx(0.5)
    loss.backward()
    # the clipped term is active at token 0, so no gradient reaches that prediction
    torch.testing.assert_close(values.grad, torch.zeros(1, 3))


def test_value_loss_unclipped_gradient():
    values = torch.tensor([[3.0, 0.05]], requires_grad=True)
    old, returns = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    loss, _ = value_loss(values, old, returns, torch.ones(1, 2), clip_range_value=0.2)
    # token 0: max((3-1)^2, (0.2-1)^2) = 4 unclipped; token 1: both (0.05-1)^2
    assert loss.item() == pytest.approx(0.5 * (4.0 + 0.95**2) / 2)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[2.0 / 2, -0.95 / 2]]))


def test_explained_variance():
    gen = torch.Generator().manual_seed(4)
    returns, values = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    r, v = returns[mask].numpy(), values[mask].numpy()
    assert explained_variance(values, returns, mask).item() == pytest.approx(
        1 - np.var(r - v) / np.var(r), rel=1e-5
    )
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, returns[mask].mean().item())
    assert explained_variance(constant, returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(explained_variance(values, torch.ones(3, 4), mask).item())


# --- KL controllers ------------------------------------------------------------------------------------


def test_adaptive_kl_controller_hand_values():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=512)  # error 0.5 clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 512 / 10000))
    before = ctl.value
    ctl.update(current_kl=6.0, n_steps=512)  # on target: unchanged
    assert ctl.value == before
    ctl.update(current_kl=5.4, n_steps=100)  # error -0.1, inside the clip
    assert ctl.value == pytest.approx(before * (1 - 0.1 * 100 / 10000))
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_kl_controllers_resume_exactly():
    kls = [3.0, 8.0, 6.5, 1.0, 12.0, 5.9]
    straight = AdaptiveKLController(0.05, target=6.0, horizon=1000)
    for kl in kls:
        straight.update(kl, 64)
    first = AdaptiveKLController(0.05, target=6.0, horizon=1000)
    for kl in kls[:3]:
        first.update(kl, 64)
    resumed = AdaptiveKLController(0.5, target=1.0, horizon=1)  # wrong settings, overwritten by the state
    resumed.load_state_dict(first.state_dict())
    for kl in kls[3:]:
        resumed.update(kl, 64)
    assert resumed.value == straight.value  # bit-for-bit
    assert resumed.state_dict() == straight.state_dict()

    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
