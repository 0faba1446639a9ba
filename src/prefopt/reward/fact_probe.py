"""Which facts does a testbed reward model check against the post? Fact swaps, scored two ways.

    python -m prefopt.reward.fact_probe runs/<name> [--posts 200]

For each held-out post, a faithful clean summary and its twins with one fact swapped
(`testbed.fact_swaps`). Per slot, it prints how often the faithful one wins
  (a) by the SFT policy's summed log-likelihood: is the fact known to the model the reward model starts from?
  (b) by the reward model: did it learn from the comparisons to check that fact?
0.5 means the fact is not checked at all.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prefopt.data.testbed import FactSwap, fact_swaps
from prefopt.data.testbed_writers import FACT_SLOTS


def lm_fact_check(model, tok, swaps: Sequence[FactSwap], budget: tuple[int, int]) -> dict[str, float]:
    """(a): per slot, how often log pi(faithful | post) > log pi(swapped | post) under causal LM `model`."""
    from prefopt.eval.evaluate import response_logprobs
    from prefopt.reward.train import score_fact_swaps

    def log_likelihood(seqs) -> list[float]:
        prompts, completions = [x.prompt for x in seqs], [x.completion for x in seqs]
        return [sum(lp) for lp in response_logprobs(model, prompts, completions, tok.pad_token_id)]

    return score_fact_swaps(swaps, tok, budget, log_likelihood)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a testbed run folder with sft/model and reward/model")
    ap.add_argument("--posts", type=int, default=200, help="held-out posts (x 5 slots)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (the testbed's data seed)")
    args = ap.parse_args(argv)

    import torch

    from prefopt.models.adapters import load_merged_policy, read_meta
    from prefopt.models.load import load_tokenizer
    from prefopt.reward.model import load_reward_model, reward_model_dir
    from prefopt.reward.train import fact_check_scores

    torch.manual_seed(0)
    sft_dir, rm_dir = args.run / "sft" / "model", reward_model_dir(args.run / "reward")
    meta = read_meta(rm_dir)
    budget = (meta["max_prompt_tokens"], meta["max_summary_tokens"])
    tok = load_tokenizer(str(sft_dir))
    with torch.no_grad():
        lm = load_merged_policy(sft_dir, tok, dtype="float32", device="cpu").eval()
        rows = {
            "SFT log-likelihood": lm_fact_check(lm, tok, fact_swaps("valid", args.posts, args.seed), budget)
        }
        del lm
        rm = load_reward_model(rm_dir, tok, "cpu", dtype="float32")
        rows["reward model"] = fact_check_scores(rm, tok, "valid", budget, args.seed, n_posts=args.posts)
    print(f"faithful summary beats its one-fact-swapped twin ({args.posts} held-out posts per slot):")
    print(f"{'':20s}" + "".join(f"{s:>10s}" for s in (*FACT_SLOTS, "all")))
    for name, acc in rows.items():
        print(f"{name:20s}" + "".join(f"{acc[s]:10.3f}" for s in (*FACT_SLOTS, "all")))
    return rows


if __name__ == "__main__":
    main()
