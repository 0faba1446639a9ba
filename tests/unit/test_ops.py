"""prefopt.ops against hand-worked tensors and independent numpy / naive torch computations."""

import math

import numpy as np
import pytest
import torch

from prefopt.ops import (
    chunked_token_logprobs,
    entropy_from_logits,
    first_true_indices,
    gather_last,
    last_true_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    truncate_after_eos,
)

X = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 6.0, -7.0]])
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
REAL = np.array([1.0, 2.0, 4.0, 5.0, 6.0])  # X at the real tokens, by hand


def with_garbage_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with every padded value replaced by something that would poison any statistic."""
    garbage = torch.tensor([float("inf"), float("nan"), 1e30, -1e30]).repeat(x.numel())[: x.numel()]
    return torch.where(mask, x, garbage.view_as(x))


# --- masked statistics ---------------------------------------------------------------------------------


def test_masked_mean_hand_values():
    assert masked_mean(X, MASK).item() == pytest.approx(18.0 / 5)
    torch.testing.assert_close(masked_mean(X, MASK, dim=1), torch.tensor([1.5, 5.0]))
    torch.testing.assert_close(
        masked_mean(X, MASK.float(), dim=0), torch.tensor([2.5, 3.5, 6.0, float("nan")]), equal_nan=True
    )


def test_masked_var_matches_numpy():
    assert masked_var(X, MASK).item() == pytest.approx(np.var(REAL, ddof=1))
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(np.var(REAL, ddof=0))
    with pytest.raises(ValueError):
        masked_var(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))  # one real token


def test_masked_whiten_matches_numpy():
    expected = (REAL - REAL.mean()) / np.sqrt(np.var(REAL, ddof=1) + 1e-8)
    out = masked_whiten(X, MASK)
    np.testing.assert_allclose(out[MASK].numpy(), expected, rtol=1e-5)
    assert (out[~MASK] == 0).all()
    kept = masked_whiten(X, MASK, shift_mean=False)
    np.testing.assert_allclose(kept[MASK].numpy(), expected + REAL.mean(), rtol=1e-5)
    assert (kept[~MASK] == 0).all()


def test_padding_never_leaks_into_statistics():
    dirty = with_garbage_padding(X, MASK)
    assert masked_mean(dirty, MASK) == masked_mean(X, MASK)
    torch.testing.assert_close(masked_mean(dirty, MASK, dim=1), masked_mean(X, MASK, dim=1))
    assert masked_var(dirty, MASK) == masked_var(X, MASK)
    torch.testing.assert_close(masked_whiten(dirty, MASK), masked_whiten(X, MASK))
    torch.testing.assert_close(masked_whiten(dirty, MASK, False), masked_whiten(X, MASK, False))


# --- log-probabilities and entropy ---------------------------------------------------------------------


def test_logprobs_hand_example_with_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # p = [1/4, 3/4]
    tokens = torch.tensor([[1, 0]])
    out = logprobs_from_logits(logits, tokens)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25)]]))
    # temperature 2 -> logits [0, ln3 / 2] -> p(1) = sqrt3 / (1 + sqrt3)
    s3 = math.sqrt(3.0)
    out_t = logprobs_from_logits(logits, tokens, temperature=2.0)
    torch.testing.assert_close(out_t, torch.tensor([[math.log(s3 / (1 + s3)), math.log(1 / (1 + s3))]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_match_naive_log_softmax(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, generator=gen)).to(dtype)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    naive = torch.log_softmax(logits.double() / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out = logprobs_from_logits(logits, tokens, temperature=0.7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), naive, atol=1e-5, rtol=1e-5)


def test_logprobs_gradient_matches_naive():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 4), generator=gen)
    weights = torch.randn(2, 4, generator=gen)
    (logprobs_from_logits(logits, tokens, 1.3) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    naive = torch.log_softmax(logits / 1.3, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (naive * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad)


def test_entropy_hand_and_naive():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[expected, math.log(2.0)]]))
    gen = torch.Generator().manual_seed(2)
    big = torch.randn(2, 3, 13, generator=gen).to(torch.bfloat16)
    p = torch.softmax(big.double() / 0.5, -1)
    naive = -(p * p.log()).sum(-1)
    torch.testing.assert_close(
        entropy_from_logits(big, temperature=0.5).double(), naive, atol=1e-5, rtol=1e-5
    )


def _naive_logprobs_entropy(hidden, weight, tokens, temperature, bias=None):
    logits = torch.nn.functional.linear(hidden, weight, bias) / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_logprobs_values_and_grads_match_naive(use_bias, dtype):
    """float32: equal to 1e-5; float64 shows the gradients are the same computation (to 1e-10)."""
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 7, 16, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(50, 16, generator=gen, dtype=dtype).requires_grad_()
    bias = torch.randn(50, generator=gen, dtype=dtype).requires_grad_() if use_bias else None
    tokens = torch.randint(0, 50, (2, 7), generator=gen)
    coef_lp, coef_ent = (
        torch.randn(2, 7, generator=gen, dtype=dtype),
        torch.randn(2, 7, generator=gen, dtype=dtype),
    )
    params = [hidden, weight] + ([bias] if use_bias else [])

    # chunk_size 3 does not divide the 14 positions: the last chunk is short
    lp, ent = chunked_token_logprobs(
        hidden, weight, tokens, 0.7, chunk_size=3, with_entropy=True, lm_head_bias=bias
    )
    ours = torch.autograd.grad((lp * coef_lp + ent * coef_ent).sum(), params)
    ref_lp, ref_ent = _naive_logprobs_entropy(hidden, weight, tokens, 0.7, bias)
    theirs = torch.autograd.grad((ref_lp * coef_lp + ref_ent * coef_ent).sum(), params)

    torch.testing.assert_close(lp, ref_lp, atol=tol, rtol=tol)
    torch.testing.assert_close(ent, ref_ent, atol=tol, rtol=tol)
    for g_ours, g_theirs in zip(ours, theirs, strict=True):
        # float32 gradients sum 50 vocabulary terms in another order: 1e-4 absolute
        torch.testing.assert_close(g_ours, g_theirs, atol=10 * tol, rtol=tol)
    with torch.no_grad():  # the no-grad path (rollouts) gives the same numbers
        lp_ng, ent_ng = chunked_token_logprobs(hidden, weight, tokens, 0.7, chunk_size=4, lm_head_bias=bias)
    assert ent_ng is None
    torch.testing.assert_close(lp_ng, ref_lp, atol=tol, rtol=tol)


def test_chunked_logprobs_backward_keeps_no_logits():
    """Between forward and backward autograd keeps no logits (only the chunks' inputs and a reference to the
    weight itself); the naive way keeps [B, T, V] of them."""
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 8, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 300, (2, 8), generator=gen)

    def largest_saved(fn) -> int:
        sizes = [0]

        def pack(t):
            if t.data_ptr() != weight.data_ptr():  # a reference to the LM head costs no memory
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return max(sizes)

    naive = largest_saved(lambda: _naive_logprobs_entropy(hidden, weight, tokens, 1.0))
    chunked = largest_saved(
        lambda: chunked_token_logprobs(hidden, weight, tokens, chunk_size=4, with_entropy=True)
    )
    assert naive >= 16 * 300
    assert chunked < 4 * 300  # not even one chunk's logits are held between forward and backward


def test_chunked_logprobs_rejects_bad_chunk_size():
    with pytest.raises(ValueError):
        chunked_token_logprobs(
            torch.zeros(1, 2, 3), torch.zeros(4, 3), torch.zeros(1, 2, dtype=torch.long), chunk_size=0
        )


# --- index helpers -------------------------------------------------------------------------------------


def test_first_true_indices():
    bools = torch.tensor(
        [[False, True, False, True], [False, False, False, False], [True, False, False, False]]
    )
    out = first_true_indices(bools)
    assert out.tolist() == [1, 4, 0] and out.dtype == torch.long
    assert first_true_indices(bools, dtype=torch.int32).dtype == torch.int32


def test_truncate_after_eos():
    eos, pad = 2, 0
    tokens = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9], [5, 6, 7, 2]])
    out, mask = truncate_after_eos(tokens, eos, pad)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 6, 7, 2]]
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert tokens[0, 2] == 7  # the input is not modified


def test_last_true_index_and_gather_last_right_and_left_padding():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert last_true_index(mask).tolist() == [1, 3, 3, -1]
    values = torch.arange(12.0).view(3, 4)
    assert gather_last(values, mask[:3]).tolist() == [1.0, 7.0, 11.0]
    hidden = torch.arange(24.0).view(3, 4, 2)  # [B, T, H] -> [B, H]
    assert gather_last(hidden, mask[:3]).tolist() == [[2.0, 3.0], [14.0, 15.0], [22.0, 23.0]]
    with pytest.raises(ValueError):
        gather_last(torch.zeros(4, 4), mask)
