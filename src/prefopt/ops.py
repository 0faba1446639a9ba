"""Torch-only tensor math shared by the SFT, reward and PPO stages.

Conventions used throughout:
- ``B`` batch rows, ``T`` positions, ``V`` vocabulary size, ``H`` hidden size.
- A ``mask`` is ``True`` (or 1) at real tokens and ``False`` (or 0) at padding. Every statistic here is taken
  over real tokens only, and padded values never reach the result, even when they are ``inf`` or ``nan``.
- Log-probabilities are returned in float32 for bf16/fp16/fp32 logits (float64 stays float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------
# Masked statistics
# ----------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is true.

    x: [...]; mask: same shape as x (bool or 0/1). dim=None reduces everything to a scalar; an int reduces
    that dimension only. A slice with no real token gives nan (0 / 0), as an empty mean should.
    """
    keep = mask.to(torch.bool)
    total = x.masked_fill(~keep, 0).sum() if dim is None else x.masked_fill(~keep, 0).sum(dim)
    count = keep.sum() if dim is None else keep.sum(dim)
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all real tokens (a scalar).

    x, mask: same shape. ``unbiased`` applies Bessel's correction n / (n - 1), with n the number of real
    tokens; it needs n >= 2 (ValueError otherwise, rather than a silent inf).
    """
    keep = mask.to(torch.bool)
    n = int(keep.sum())
    if n == 0 or (unbiased and n == 1):
        raise ValueError(f"masked_var needs {'2' if unbiased else '1'}+ real tokens, got {n}")
    centred = x - masked_mean(x, keep)
    var = masked_mean(centred * centred, keep)
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance over real tokens; padded positions become 0.

    x, mask: [B, T] (any equal shapes). The mean and (unbiased) variance are taken over all real tokens of
    the whole batch. ``shift_mean=True`` gives zero mean (used for advantages); ``shift_mean=False`` only
    rescales and keeps the original mean (used for the optional reward whitening, so the sign of the
    rewards is kept).
    """
    keep = mask.to(torch.bool)
    mean, var = masked_mean(x, keep), masked_var(x, keep)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.masked_fill(~keep, 0)


# ----------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# ----------------------------------------------------------------------------------------------------------


def _token_logprob_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits: [N, V]; tokens: [N] -> (log p(token) [N], entropy [N] or None), at least float32.
    `entropy_grad=False` computes the entropy outside the autograd graph (a statistic only)."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    logprob = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logprob, None
    # H = -sum p log p = lse - sum p z, with p = softmax(z)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    return logprob, entropy


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(tokens) under softmax(logits / temperature).

    logits: [B, T, V] (fp32, bf16 or fp16); tokens: [B, T] long -> [B, T] float32.
    Works one batch row at a time, so at most a [T, V] float32 copy exists at once: with bf16 logits and
    Qwen3's 151,936-token vocabulary a full float32 log_softmax would double-to-triple the peak memory.
    Differentiable with respect to ``logits``.
    """
    rows = [
        _token_logprob_and_entropy(logits[b], tokens[b], temperature, False)[0] for b in range(len(logits))
    ]
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position.

    logits: [B, T, V] -> [B, T] float32. One batch row at a time, as in ``logprobs_from_logits``.
    """
    dummy = torch.zeros(logits.shape[1], dtype=torch.long, device=logits.device)
    rows = [_token_logprob_and_entropy(logits[b], dummy, temperature, True)[1] for b in range(len(logits))]
    return torch.stack(rows)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
    lm_head_bias: torch.Tensor | None = None,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(tokens) (and entropy) straight from the last hidden states, a chunk of positions at a time.

    hidden: [B, T, H] (hidden[b, t] gives the logits that score tokens[b, t]); lm_head_weight: [V, H];
    tokens: [B, T] long; lm_head_bias: [V] or None.
    Returns (logprobs [B, T] float32, entropy [B, T] float32 or None when ``with_entropy`` is False).

    The logits of ``chunk_size`` positions ([chunk_size, V] float32) are the largest tensor ever built, so
    the [B, T, V] logits are never materialised. When gradients are on, each chunk runs under activation
    checkpointing: the backward recomputes that chunk's logits instead of keeping every chunk's alive,
    so the backward's memory stays one chunk's worth too. Gradients flow to ``hidden`` and the weight.

    ``entropy_grad=False`` returns the entropy detached, for callers that only log it. Pass it whenever
    no gradient goes through the entropy: otherwise each chunk's recomputation also saves the entropy
    branch's [chunk_size, V] tensors, which no backward step consumes, so they stay alive until the
    whole backward ends and the peak grows with B x T again (2.5 GiB for 32 x 53 positions, V = 151,936).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_tokens = tokens.reshape(-1)

    def one_chunk(h: torch.Tensor, weight: torch.Tensor, tok: torch.Tensor, *bias: torch.Tensor):
        logits = F.linear(h, weight, bias[0] if bias else None)
        logprob, entropy = _token_logprob_and_entropy(logits, tok, temperature, with_entropy, entropy_grad)
        return (logprob, entropy) if with_entropy else (logprob,)

    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad
        or lm_head_weight.requires_grad
        or (lm_head_bias is not None and lm_head_bias.requires_grad)
    )
    extra = () if lm_head_bias is None else (lm_head_bias,)
    outputs = []
    for start in range(0, flat_tokens.numel(), chunk_size):
        args = (
            flat_hidden[start : start + chunk_size],
            lm_head_weight,
            flat_tokens[start : start + chunk_size],
        )
        if needs_grad:
            outputs.append(checkpoint(one_chunk, *args, *extra, use_reentrant=False))
        else:
            outputs.append(one_chunk(*args, *extra))
    logprobs = torch.cat([out[0] for out in outputs]).reshape(tokens.shape)
    entropy = torch.cat([out[1] for out in outputs]).reshape(tokens.shape) if with_entropy else None
    return logprobs, entropy


# ----------------------------------------------------------------------------------------------------------
# Index helpers for padded sequences
# ----------------------------------------------------------------------------------------------------------


def first_true_indices(bools: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Index of the first True in each row, or the row length when a row has none.

    bools: [B, T] bool -> [B] ``dtype``.
    """
    length = bools.shape[-1]
    positions = torch.arange(length, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, length).min(dim=-1).values.to(dtype)


def truncate_after_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each row up to and including its first EOS; replace everything after it with PAD.

    tokens: [B, T] long (sampled responses) -> (truncated tokens [B, T], mask [B, T] bool of kept tokens).
    A row without EOS is kept whole (the caller gives it the "no EOS" score).
    """
    first_eos = first_true_indices(tokens == eos_id).unsqueeze(-1)  # [B, 1]; T when there is no EOS
    positions = torch.arange(tokens.shape[-1], device=tokens.device)
    mask = positions <= first_eos
    return tokens.masked_fill(~mask, pad_id), mask


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row, or -1 when a row has none.

    mask: [B, T] (bool or 0/1) -> [B] long. Works for right- and left-padded rows alike, since it looks for
    the last real token rather than counting them.
    """
    keep = mask.to(torch.bool)
    length = keep.shape[-1]
    return length - 1 - first_true_indices(keep.flip(-1))


def gather_last(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The value at the last real token of each row (e.g. a reward model's score).

    values: [B, T] or [B, T, ...]; mask: [B, T] -> [B] or [B, ...]. Raises ValueError if a row has no real
    token, since there is then no right answer.
    """
    index = last_true_index(mask)
    if bool((index < 0).any()):
        raise ValueError("gather_last: a row has no real token")
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, index]
