"""Batch widths rounded up to a multiple (`model.pad_to_multiple_of`): more padding, the same losses;
shuffled orders that keep one post's comparisons together."""

import random

import torch

from prefopt.batching import (
    IGNORE,
    TokenizedPair,
    collate_left,
    collate_right,
    collate_sft,
    grouped_order,
    round_up,
)
from prefopt.sft.train import completion_nll

PAD = 0


def test_round_up():
    assert [round_up(n, 16) for n in (1, 16, 17, 32)] == [16, 16, 32, 32]
    assert round_up(13, 1) == 13


def test_left_and_right_padding_to_a_multiple():
    left = collate_left([[5, 6, 7], [8]], PAD, multiple=4)
    assert left["input_ids"].tolist() == [[PAD, 5, 6, 7], [PAD, PAD, PAD, 8]]
    right = collate_right([[5, 6, 7, 9, 9], [8]], PAD, multiple=4)
    assert right["input_ids"].shape == (2, 8) and right["attention_mask"].sum().item() == 6


def test_sft_loss_is_the_same_at_any_width_multiple(tiny_qwen3):
    model = tiny_qwen3(vocab_size=40)
    pairs = [TokenizedPair([3, 4, 5, 6], [7, 8, 1]), TokenizedPair([9, 10], [11, 1])]
    narrow, wide = collate_sft(pairs, PAD), collate_sft(pairs, PAD, multiple=16)
    assert narrow["input_ids"].shape[1] == 7 and wide["input_ids"].shape[1] == 16
    assert (wide["labels"][:, 7:] == IGNORE).all()
    with torch.no_grad():
        torch.testing.assert_close(
            completion_nll(model, wide), completion_nll(model, narrow), atol=1e-5, rtol=0
        )


def test_grouped_order_keeps_each_group_together_and_shuffles_the_groups():
    rng = random.Random(0)
    groups = [g for g in range(300) for _ in range(rng.randint(1, 8))]  # 1-8 comparisons per post
    lengths = [rng.randint(50, 400) for _ in groups]
    order = grouped_order(lengths, groups, batch_size=32, seed=1)
    assert sorted(order) == list(range(len(groups)))  # a permutation
    seen = [groups[i] for i in order]
    runs = [g for k, g in enumerate(seen) if k == 0 or g != seen[k - 1]]
    assert len(runs) == 300  # every group is one contiguous run ...
    for g in (0, 150, 299):
        members = [i for i in order if groups[i] == g]
        assert members == sorted(members)  # ... in its own order
    assert runs != sorted(runs)  # the groups are shuffled
    assert grouped_order(lengths, groups, 32, seed=1) == order
    assert grouped_order(lengths, groups, 32, seed=2) != order
