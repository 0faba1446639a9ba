"""One rollout: sample responses, truncate after EOS, and score them with every role.

All tensors of a batch live in one typed `Rollout`; shapes use B = prompts, P = prompt width
(left-padded), R = response budget (`ppo.response_length`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from prefopt.batching import round_up
from prefopt.generate import sample_batch
from prefopt.models.roles import reward_score
from prefopt.ops import chunked_token_logprobs, truncate_after_eos

# Positions whose logits are built at once: at most 512, and at most 64 MiB of float32 logits. With Qwen3's
# 151,936-token head, 512 positions would be 297 MiB a copy and the backward holds ~5 copies per chunk.
LOGPROB_CHUNK_MAX, LOGPROB_CHUNK_BYTES = 512, 64 * 2**20


def logprob_chunk_size(vocab_size: int) -> int:
    """Positions per chunk of `chunked_token_logprobs` for a `vocab_size`-row LM head (>= 1)."""
    return max(1, min(LOGPROB_CHUNK_MAX, LOGPROB_CHUNK_BYTES // (4 * vocab_size)))


@dataclass
class Rollout:
    queries: torch.Tensor  # [B, P] left-padded prompt ids
    query_mask: torch.Tensor  # [B, P] 1 at real prompt tokens
    responses: torch.Tensor  # [B, R] sampled ids, PAD after the first EOS
    response_mask: torch.Tensor  # [B, R] True up to and including the first EOS
    logprobs: torch.Tensor  # [B, R] log pi_old(token), logits / T
    ref_logprobs: torch.Tensor  # [B, R] log pi_ref(token), logits / T
    values: torch.Tensor  # [B, R] V(state before each token)
    scores: torch.Tensor  # [B] reward-model score (normalised), missing-EOS score applied
    raw_scores: torch.Tensor  # [B] reward-model score before the missing-EOS rule
    has_eos: torch.Tensor  # [B] bool

    def __len__(self) -> int:
        return self.queries.shape[0]

    def select(self, idx: torch.Tensor) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def without_pad_columns(self, multiple: int = 1) -> Rollout:
        """The same rows without the prompt columns that are padding in every row (keeping the prompt
        width a multiple of `multiple`). Positions count real tokens only, so every output is unchanged;
        a micro-batch of short prompts just runs shorter."""
        width = self.queries.shape[1]
        real = width - int(self.query_mask.any(dim=0).nonzero()[0])
        first = max(0, width - round_up(real, multiple))
        if first == 0:
            return self
        return Rollout(**{
            f.name: getattr(self, f.name)[:, first:] if f.name in ("queries", "query_mask")
            else getattr(self, f.name)
            for f in fields(self)
        })  # fmt: skip

    @property
    def sequences(self) -> torch.Tensor:
        return torch.cat([self.queries, self.responses], dim=1)

    @property
    def sequence_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)


def response_logprobs(roles, role: str, rollout: Rollout, temperature: float, with_entropy: bool = False):
    """log p(response token) under `role` ("policy" or "ref"), logits divided by the temperature.

    The hidden state at position P-1+t predicts response token t. Log-probs are taken through the LM
    head in chunks (`logprob_chunk_size`), so [B, R, V] float32 logits never exist at once (Qwen3:
    V = 151,936). The entropy is returned detached: PPO only logs it, and keeping it in the graph would
    hold every chunk's recomputed softmax until the backward ends.
    """
    p = rollout.queries.shape[1]
    h = roles.hidden(role, rollout.sequences, rollout.sequence_mask)[:, p - 1 : -1]  # [B, R, H]
    return chunked_token_logprobs(
        h,
        roles.lm_head_weight,
        rollout.responses,
        temperature,
        chunk_size=logprob_chunk_size(roles.lm_head_weight.shape[0]),
        with_entropy=with_entropy,
        entropy_grad=False,
    )


def response_values(roles, rollout: Rollout) -> torch.Tensor:
    """[B, R]: the value head on the state before each response token."""
    p = rollout.queries.shape[1]
    h = roles.hidden("value", rollout.sequences, rollout.sequence_mask)[:, p - 1 : -1]
    return roles.value_head(h.to(roles.value_head.weight.dtype)).squeeze(-1).float()


@torch.no_grad()
def collect(
    roles,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    response_length: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    missing_eos_score: float | None,
    forward_batch: int,
    generation_batch: int = 64,
) -> Rollout:
    """Sample a fixed budget of tokens per prompt, truncate after the first EOS, then compute old
    log-probs, reference log-probs, values and scores (in chunks of `forward_batch` rows)."""
    with roles.generation_model() as lm:
        raw = torch.cat([
            sample_batch(lm, queries[i : i + generation_batch], query_mask[i : i + generation_batch],
                         response_length, temperature, None)
            for i in range(0, queries.shape[0], generation_batch)
        ])  # fmt: skip
    responses, mask = truncate_after_eos(raw, eos_id, pad_id)
    has_eos = (raw == eos_id).any(dim=1)
    per_token = torch.zeros(responses.shape, device=queries.device)  # placeholders, filled below
    per_row = torch.zeros(queries.shape[0], device=queries.device)
    ro = Rollout(
        queries, query_mask, responses, mask, per_token, per_token, per_token, per_row, per_row, has_eos
    )
    parts = {"logprobs": [], "ref_logprobs": [], "values": [], "raw_scores": []}
    for start in range(0, len(ro), forward_batch):
        chunk = ro.select(torch.arange(start, min(start + forward_batch, len(ro)), device=queries.device))
        parts["logprobs"].append(response_logprobs(roles, "policy", chunk, temperature)[0])
        parts["ref_logprobs"].append(response_logprobs(roles, "ref", chunk, temperature)[0])
        parts["values"].append(response_values(roles, chunk))
        parts["raw_scores"].append(reward_score(roles, chunk.sequences, chunk.sequence_mask))
    for name, tensors in parts.items():
        setattr(ro, name, torch.cat(tensors).float())  # fp32 whatever the autocast
    ro.scores = ro.raw_scores.clone()
    if missing_eos_score is not None:
        ro.scores[~has_eos] = missing_eos_score
    return ro
