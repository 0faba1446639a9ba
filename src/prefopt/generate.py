"""Sampling responses: left-padded prompts, KV cache, a fixed token budget, truncation after EOS."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from prefopt.batching import collate_left


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    pad_id: int,
    eos_id: int,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Sample `max_new_tokens` tokens for every prompt (greedy when temperature == 0).

    Returns the raw responses (not yet truncated): a fixed budget, so the caller truncates after the
    first EOS. Uses the model's KV cache through a plain loop: one forward per token, no per-step
    logits processors.
    """
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = collate_left(prompts[start : start + batch_size], pad_id)
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        out += sample_batch(model, ids, mask, max_new_tokens, temperature, generator).tolist()
    return out


def sample_batch(model, ids, mask, max_new_tokens: int, temperature: float, generator) -> torch.Tensor:
    """[B, P] left-padded -> [B, max_new_tokens] sampled tokens."""
    cache_kw = cache_kwarg(model)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, logits = cache_of(out), out.logits[:, -1, :]
    next_pos = pos[:, -1:] + 1
    tokens = []
    for step in range(max_new_tokens):
        tok = _pick(logits.float(), temperature, generator)
        tokens.append(tok)
        if step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        step_kw = {cache_kw: cache}
        out = model(input_ids=tok, attention_mask=mask, position_ids=next_pos, use_cache=True, **step_kw)
        cache, logits = cache_of(out), out.logits[:, -1, :]
        next_pos = next_pos + 1
    return torch.cat(tokens, dim=1)


def cache_kwarg(model) -> str:
    """transformers 5.x names the KV cache `cache`; 4.x `past_key_values`."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper's model
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def cache_of(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _pick(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """[B, V] -> [B, 1]: argmax at temperature 0, else a sample from softmax(logits / T)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def truncate_at_eos(tokens: Sequence[int], eos_id: int) -> tuple[list[int], bool]:
    """Tokens up to and including the first EOS, and whether an EOS was found."""
    tokens = list(tokens)
    if eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1], True
    return tokens, False


def decode_responses(tokenizer, responses: Sequence[Sequence[int]]) -> list[str]:
    """Text of each response cut at its first EOS, without special tokens or the leading space."""
    texts = []
    for r in responses:
        kept, _ = truncate_at_eos(r, tokenizer.eos_token_id)
        texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return texts
