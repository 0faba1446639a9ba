"""`entropy_grad=False` in the chunked log-prob path: same numbers, and the entropy adds nothing to the graph.

Why it matters: under activation checkpointing each chunk is recomputed in the backward; any tensor the
entropy branch saves is never consumed (no gradient flows through a logged statistic), so it would stay
alive until the whole backward ends, one [chunk, V] set per chunk (bench/real_vocab.py measured it).
"""

from __future__ import annotations

import torch

from prefopt.ops import _token_logprob_and_entropy, chunked_token_logprobs


def _naive(hidden, weight, tokens, temperature):
    logp = torch.log_softmax(torch.nn.functional.linear(hidden, weight) / temperature, -1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _inputs(seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 40, (3, 5), generator=gen)
    return hidden, weight, tokens


def test_detached_entropy_same_values_and_logprob_grads():
    hidden, weight, tokens = _inputs()
    lp, ent = chunked_token_logprobs(
        hidden, weight, tokens, 0.7, chunk_size=4, with_entropy=True, entropy_grad=False
    )
    ref_lp, ref_ent = _naive(hidden, weight, tokens, 0.7)
    torch.testing.assert_close(lp, ref_lp, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ent, ref_ent.detach(), atol=1e-10, rtol=1e-10)
    assert not ent.requires_grad and lp.requires_grad
    coef = torch.randn(3, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ours = torch.autograd.grad((lp * coef).sum(), [hidden, weight])
    theirs = torch.autograd.grad((ref_lp * coef).sum(), [hidden, weight])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def _saved_numel(**kwargs) -> int:
    """Elements autograd saves for one un-checkpointed chunk computation (what a recompute would keep)."""
    hidden, weight, tokens = _inputs()
    logits = torch.nn.functional.linear(hidden.reshape(-1, 8), weight)
    total = [0]

    def pack(t):
        total[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _token_logprob_and_entropy(logits, tokens.reshape(-1), 0.7, **kwargs)
    return total[0]


def test_detached_entropy_saves_nothing_more_than_logprobs_alone():
    only_logprob = _saved_numel(with_entropy=False)
    detached = _saved_numel(with_entropy=True, entropy_grad=False)
    in_graph = _saved_numel(with_entropy=True, entropy_grad=True)
    assert detached == only_logprob
    assert in_graph >= only_logprob + 15 * 40  # at least one more [positions, V] tensor (softmax)


def test_rollout_chunk_size_bounds_the_logits_bytes():
    from prefopt.ppo.rollout import LOGPROB_CHUNK_BYTES, logprob_chunk_size

    assert logprob_chunk_size(3072) == 512  # small vocabularies keep 512-position chunks
    qwen = logprob_chunk_size(151_936)
    assert qwen == 110 and qwen * 4 * 151_936 <= LOGPROB_CHUNK_BYTES < (qwen + 1) * 4 * 151_936
    assert logprob_chunk_size(10**9) == 1  # never 0
