"""Token ids and batches: the one place where text becomes tensors.

Prompt and completion are tokenised separately (so the loss mask is exact), the completion always
ends with EOS, and batches are grouped by length so little compute is spent on padding.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefopt.data.types import Comparison, Post, SFTExample

IGNORE = -100


@dataclass(frozen=True)
class TokenizedPair:
    """One prompt and one completion as ids; `completion` ends with EOS."""

    prompt: list[int]
    completion: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.completion)


def prompt_ids(post: Post, tokenizer, max_prompt_tokens: int) -> list[int]:
    """The OpenAI prompt, smart-truncated to fit the budget, as ids (one tokenisation when it fits)."""
    from prefopt.data.tldr import build_prompt

    ids = tokenizer(post.prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_prompt_tokens:
        return ids
    text = build_prompt(post, tokenizer, max_prompt_tokens)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_ids(summary_with_space: str, tokenizer) -> list[int]:
    """`" " + summary` followed by EOS."""
    return tokenizer(summary_with_space, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_sft(
    examples: Sequence[SFTExample], tokenizer, max_prompt_tokens: int, max_summary_tokens: int
) -> list[TokenizedPair]:
    """Tokenise SFT examples. A completion longer than the budget is dropped and counted in a warning
    (a truncated summary without its EOS would teach the model never to stop)."""
    out, too_long = [], 0
    for ex in examples:
        completion = completion_ids(ex.completion, tokenizer)
        if len(completion) > max_summary_tokens:
            too_long += 1
            continue
        out.append(TokenizedPair(prompt_ids(ex.post, tokenizer, max_prompt_tokens), completion))
    if too_long:
        warnings.warn(
            f"{too_long} of {len(examples)} SFT examples dropped: summary longer than "
            f"data.max_summary_tokens={max_summary_tokens} tokens",
            stacklevel=2,
        )
    if not out:
        raise ValueError("no SFT example left after tokenisation: raise data.max_summary_tokens")
    return out


def tokenize_comparisons(
    comparisons: Sequence[Comparison], tokenizer, max_prompt_tokens: int, max_summary_tokens: int
) -> list[tuple[TokenizedPair, TokenizedPair]]:
    """(chosen, rejected) pairs sharing one prompt. Summaries longer than the budget are cut and end in EOS
    anyway: the reward model must score whatever the policy writes, and dropping a pair would bias the data."""
    out = []
    for c in comparisons:
        prompt = prompt_ids(c.post, tokenizer, max_prompt_tokens)
        pair = []
        for text in (c.chosen, c.rejected):
            ids = completion_ids(" " + text, tokenizer)
            if len(ids) > max_summary_tokens:
                ids = ids[: max_summary_tokens - 1] + [tokenizer.eos_token_id]
            pair.append(TokenizedPair(prompt, ids))
        out.append((pair[0], pair[1]))
    return out


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, seed: int, group_batches: int = 32
) -> list[int]:
    """A shuffled order in which each run of `batch_size` indices has similar lengths.

    Shuffle, sort within windows of `group_batches` batches, cut into batches, shuffle the batches:
    near-random order, little padding. Deterministic in `seed` (same on every process).
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


def grouped_order(lengths: Sequence[int], groups: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """`length_grouped_order` over groups: the indices of one group (one post's comparisons) stay next
    to each other, in their own order, so a batch encodes that post once (`collate_grouped`)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    units = list(members.values())
    per_batch = max(1, round(batch_size * len(units) / max(1, len(lengths))))
    order = length_grouped_order([max(lengths[i] for i in u) for u in units], per_batch, seed)
    return [i for u in order for i in units[u]]


def round_up(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple` (the batch widths of `model.pad_to_multiple_of`)."""
    return -(-n // multiple) * multiple


def collate_sft(pairs: Sequence[TokenizedPair], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels; labels are IGNORE on prompt and padding,
    so the loss covers the completion (summary + EOS) only. The width is a multiple of `multiple`."""
    width = round_up(max(p.length for p in pairs), multiple)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, p in enumerate(pairs):
        seq = p.prompt + p.completion
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(p.prompt) : len(seq)] = torch.tensor(p.completion)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_left(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Left-padded ids and mask (for generation: every row's last token is real), `multiple`-wide."""
    width = round_up(max(len(s) for s in seqs), multiple)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s) :] = torch.tensor(list(s))
            mask[row, width - len(s) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def collate_pairs(
    pairs: Sequence[tuple[TokenizedPair, TokenizedPair]], pad_id: int, multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in ONE right-padded batch of 2B (one forward pass scores both)."""
    seqs = [p.prompt + p.completion for p, _ in pairs] + [r.prompt + r.completion for _, r in pairs]
    return collate_right(seqs, pad_id, multiple)


def collate_right(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask (every row starts at column 0), `multiple`-wide."""
    width = round_up(max(len(s) for s in seqs), multiple)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(list(s))
        mask[row, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def collate_grouped(
    pairs: Sequence[tuple[TokenizedPair, TokenizedPair]], pad_id: int, multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Comparisons as their distinct prompts and distinct completions, for `ScalarHeadModel`'s
    shared-prompt forward: every prompt is encoded once, every summary scored once, however many
    comparisons of the batch they appear in (OpenAI's TL;DR comparisons: ~6 per post over ~4 summaries).

    input_ids / attention_mask [P, Tp]   the distinct prompts, left-padded
    completion_ids / completion_mask [N, S]   the distinct (prompt, completion) pairs, right-padded
    completion_prompt [N]   which prompt row each completion continues
    chosen / rejected [B]   the completion rows of each comparison's two summaries
    """
    prompts: dict[tuple[int, ...], int] = {}
    rows: dict[tuple[int, tuple[int, ...]], int] = {}
    sides: list[list[int]] = [[], []]
    for pair in pairs:
        for side, x in zip(sides, pair, strict=True):
            p = prompts.setdefault(tuple(x.prompt), len(prompts))
            side.append(rows.setdefault((p, tuple(x.completion)), len(rows)))
    out = collate_left(list(prompts), pad_id, multiple)
    comps = collate_right([c for _, c in rows], pad_id, multiple)
    return out | {
        "completion_ids": comps["input_ids"],
        "completion_mask": comps["attention_mask"],
        "completion_prompt": torch.tensor([p for p, _ in rows], dtype=torch.long),
        "chosen": torch.tensor(sides[0], dtype=torch.long),
        "rejected": torch.tensor(sides[1], dtype=torch.long),
    }


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions as unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
