"""The torch-only math of PPO for RLHF, as pure functions.

Follows OpenAI's lm-human-preferences / summarize-from-feedback code as described in "The N+ implementation
details of RLHF with PPO" (Huang et al. 2024):
- per-token reward = -beta * KL estimate at every real response token, plus the reward model's score at the
  LAST real token of the response (details 8);
- GAE with gamma = 1, lambda = 0.95, no bootstrapping past the last real token (detail 9);
- clipped policy loss and clipped value loss, masked means everywhere (detail 10);
- Ziegler et al.'s adaptive KL controller.

Shapes: ``B`` responses, ``T`` response positions. ``mask`` [B, T] is true at real response tokens (up to and
including the first EOS) and false at padding; responses are right-padded, so each row's real tokens are
contiguous from position 0. All per-token tensors are float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.ops import last_true_index, masked_mean, masked_var, masked_whiten

KL_KINDS = ("k1", "k3", "abs", "mse")

# ----------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman's k1/k2/k3).

    logprobs = log pi(y_t), ref_logprobs = log pi_ref(y_t): [B, T] -> [B, T].
    With log r = ref_logprobs - logprobs, i.e. r = pi_ref(y_t) / pi(y_t):
      "k1":  -log r = log pi - log pi_ref            unbiased, can be negative per token (OpenAI's choice)
      "k3":  (r - 1) - log r                         unbiased, always >= 0, lower variance
      "mse": 0.5 * (log r)^2                         (Schulman's k2) biased, always >= 0
      "abs": |log r|                                 biased, always >= 0
    """
    log_r = ref_logprobs.float() - logprobs.float()
    if kind == "k1":
        return -log_r
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    if kind == "mse":
        return 0.5 * log_r.square()
    if kind == "abs":
        return log_r.abs()
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_KINDS}")


def per_token_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL-penalised reward of every response token.

    score: [B] reward-model score of each whole response; logprobs, ref_logprobs, mask: [B, T].
    Returns (rewards [B, T], kl [B, T]):
      kl[b, t]      = kl_penalty(...)[b, t] at real tokens, 0 at padding
      rewards[b, t] = -kl_coef * kl[b, t]  (+ score[b] when t is the last real token of row b)
    Placing the score at the last real token (not the last position of the padded block) is deliberate:
    with right padding, the last column is padding for every response shorter than T.
    """
    keep = mask.to(torch.bool)
    kl = kl_penalty(logprobs, ref_logprobs, kind).masked_fill(~keep, 0)
    rewards = -kl_coef * kl
    last = last_true_index(keep)
    if bool((last < 0).any()):
        raise ValueError("per_token_rewards: a response has no real token")
    rows = torch.arange(len(score), device=score.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards, kl


def whiten_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Optional reward whitening: unit variance over real tokens, mean kept. [B, T] -> [B, T]."""
    return masked_whiten(rewards, mask, shift_mean=False)


# ----------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    rewards, values, mask: [B, T] -> (advantages [B, T], returns [B, T]), both 0 at padding.
    Backward recursion with V(s_{t+1}) = 0 once t+1 is padding or past T, so nothing is bootstrapped
    beyond the last real token and padded rewards/values (whatever they hold) never leak in:
      delta_t = r_t + gamma * V_{t+1} - V_t
      A_t     = delta_t + gamma * lam * A_{t+1}
      R_t     = A_t + V_t  (the value target)
    Advantages are not whitened here: the caller whitens them (``masked_whiten``) over real tokens.
    """
    keep = mask.to(torch.bool)
    rewards = rewards.float().masked_fill(~keep, 0)
    values = values.float().masked_fill(~keep, 0)
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        # a padded position ends the episode: it passes no value and no advantage back to t-1
        next_advantage = next_advantage.masked_fill(~keep[:, t], 0)
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values).masked_fill(~keep, 0)
    return advantages, returns


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss, a masked mean over real tokens.

    logprobs: [B, T] under the current policy (with grad); old_logprobs, advantages, mask: [B, T].
    ratio = exp(logprobs - old_logprobs);
    loss = mean_real( max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) ).
    At ratio 1 (the first minibatch) the loss is -mean_real(A).
    Stats (detached scalars):
      clipfrac       fraction of real tokens where the clipped term is the larger (active) one
      approx_kl      k3 estimate of KL(pi_old || pi): mean_real((rho - 1) - log rho), rho = pi / pi_old
      approx_kl_k2   0.5 * mean_real((log rho)^2), the form logged by OpenAI's and cleanrl's code
      ratio_mean, ratio_max   over real tokens
    """
    keep = mask.to(torch.bool)
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), keep),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, keep),
            "approx_kl_k2": masked_mean(0.5 * log_ratio.square(), keep),
            "ratio_mean": masked_mean(ratio, keep),
            "ratio_max": ratio.masked_fill(~keep, float("-inf")).max(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss, a masked mean over real tokens.

    values: [B, T] current predictions (with grad); old_values (rollout-time), returns, mask: [B, T].
    clipped = old_values + clip(values - old_values, -eps_v, +eps_v);
    loss = 0.5 * mean_real( max((values - returns)^2, (clipped - returns)^2) ).
    Stats (detached scalars): vf_clipfrac (fraction of real tokens where the clipped error is the larger),
    value_mean (mean prediction over real tokens).
    """
    keep = mask.to(torch.bool)
    values = values.float()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), keep)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean((clipped_error > unclipped_error).float(), keep),
            "value_mean": masked_mean(values, keep),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over real tokens (a scalar; nan when Var[returns] = 0).

    values, returns, mask: [B, T]. 1 is a perfect value function, 0 no better than a constant.
    """
    keep = mask.to(torch.bool)
    var_returns = masked_var(returns, keep, unbiased=False)
    if float(var_returns) == 0.0:
        return torch.full_like(var_returns, float("nan"))
    return 1.0 - masked_var(returns - values, keep, unbiased=False) / var_returns


# ----------------------------------------------------------------------------------------------------------
# KL coefficient controllers
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: beta is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019)'s proportional controller that steers the KL towards a target.

    After each batch: error = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + error * n_steps / horizon.
    ``n_steps`` is the number of episodes (responses) in the batch, ``horizon`` the number of episodes over
    which the error is corrected.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
