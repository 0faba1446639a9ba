"""Reward training on OpenAI's real comparisons: three ways to batch them, timed side by side.

    .venv/bin/python bench/reward_grouping.py [--pairs 640] [--rounds 3] [--hidden 128 --layers 3]

OpenAI's TL;DR comparisons hold ~6 comparisons per post over ~4 distinct summaries
(`../shared/data/tldr/openai_comparisons_valid_last10k...`: 10,000 comparisons, 1,653 posts, 6,965
distinct summaries). A reward model's forward pass can exploit that:

  full      every comparison as two full sequences, prompt + summary each (what TRL's RewardTrainer does)
  per-pair  each comparison's prompt once, its two summaries on the prompt's KV cache, comparisons in a
            length-grouped shuffle (prefopt before: the post shared within a pair, not across pairs)
  grouped   a post's comparisons kept next to each other in the shuffle (`batching.grouped_order`), each
            distinct prompt and each distinct summary of a micro-batch run once (`collate_grouped`)

All three compute the same rewards and gradients (tests/unit/test_reward.py); this script counts the
tokens each feeds the trunk and times a Bradley-Terry forward + backward + AdamW step over the same
comparisons (the first `--pairs` of one seeded epoch order), on a tiny Qwen3 trunk with the real Qwen
tokenizer and 512-token prompts. The modes alternate within each round; medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS_FILE = (
    DATA / "tldr" / "openai_comparisons_valid_last10k.trl_tldr_preference_prompt_chosen_rejected.jsonl"
)


def batches(pairs, mode: str, batch: int, n: int, pad_id: int):
    """The first `n` comparisons of one seeded epoch order, collated for `mode`."""
    from prefopt.batching import collate_grouped, collate_pairs, grouped_order, length_grouped_order
    from prefopt.reward.train import post_groups

    lengths = [max(c.length, r.length) for c, r in pairs]
    if mode == "grouped":
        order = grouped_order(lengths, post_groups(pairs), batch, seed=0)
    else:
        order = length_grouped_order(lengths, batch, seed=0)
    collate = collate_pairs if mode == "full" else collate_grouped
    return [collate([pairs[i] for i in order[s : s + batch]], pad_id) for s in range(0, n, batch)]


def fed_tokens(b: dict) -> int:
    """Tokens the trunk runs (padding included: it is computed too)."""
    return b["input_ids"].numel() + (b["completion_ids"].numel() if "completion_ids" in b else 0)


def train_time(trunk_cfg: dict, bs: list[dict]) -> float:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from prefopt.models.heads import ScalarHeadModel
    from prefopt.reward.train import bradley_terry_loss, pair_rewards

    torch.manual_seed(0)
    model = ScalarHeadModel(Qwen3ForCausalLM(Qwen3Config(**trunk_cfg)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    for b in bs:
        r_c, r_r = pair_rewards(model, b)
        bradley_terry_loss(r_c, r_r).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=640)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()

    import torch

    from prefopt.batching import tokenize_comparisons
    from prefopt.data.load import load_comparisons
    from prefopt.models.load import load_tokenizer

    torch.set_num_threads(torch.get_num_threads())
    tok = load_tokenizer(str(DATA / "qwen-tokenizer"), eos_token="<|endoftext|>")
    pairs = tokenize_comparisons(load_comparisons(str(PAIRS_FILE)), tok, 512, 53)
    h = args.hidden
    trunk = dict(vocab_size=len(tok), hidden_size=h, intermediate_size=3 * h, num_hidden_layers=args.layers,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=h // 4, tie_word_embeddings=True,
                 pad_token_id=tok.pad_token_id)  # fmt: skip
    modes = ("full", "per-pair", "grouped")
    data = {m: batches(pairs, m, args.batch, args.pairs, tok.pad_token_id) for m in modes}
    tokens = {m: sum(map(fed_tokens, data[m])) for m in modes}
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes if r % 2 == 0 else modes[::-1]:
            seconds[m].append(train_time(trunk, data[m]))
    n = sum(len(b["chosen"]) if "chosen" in b else len(b["input_ids"]) // 2 for b in data["full"])
    print(
        f"{n} comparisons, batch {args.batch}, trunk hidden {h} x {args.layers} layers, {args.rounds} rounds"
    )
    print(f"{'mode':<10} {'tokens/comparison':>18} {'comparisons/s':>14} {'spread':>16} {'speed-up':>9}")
    base = statistics.median(seconds["full"])
    for m in modes:
        med = statistics.median(seconds[m])
        spread = f"{n / max(seconds[m]):.1f}-{n / min(seconds[m]):.1f}"
        print(f"{m:<10} {tokens[m] / n:>18.0f} {n / med:>14.1f} {spread:>16} {base / med:>8.2f}x")


if __name__ == "__main__":
    main()
