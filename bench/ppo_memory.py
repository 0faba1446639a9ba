"""Peak RSS of PPO with one shared base (LoRA) against four full models, on a model whose weights dominate.

    .venv/bin/python bench/ppo_memory.py [--hidden 256 --layers 4]

Builds a random Qwen3 with the real 151,936-row vocabulary (so the weights, not activations, are most
of the memory), runs SFT (LoRA, 2 steps) and the reward stage (LoRA, 2 steps) once, then PPO for 2
updates twice, each in a fresh process: `ppo.share_base=true` (policy, value and reward as adapters on
one base; reference = adapters off) and `ppo.share_base=false` (four models). Prints one RESULT line per
mode and the ratio. Each PPO process's peak RSS is its ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

CHILD = """
import json, resource, sys, time
from prefopt.config import build_config
from prefopt.ppo.train import train
cfg = build_config(json.loads(sys.argv[1]))
t = time.time()
train(cfg)
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.time() - t)
"""


def config(run_root: Path, base: Path, name: str) -> dict:
    return {
        "name": name,
        "output_dir": str(run_root),
        "model": {"name_or_path": str(base), "eos_token": "<|endoftext|>"},
        "data": {
            "sft_source": str(DATA / "tldr/tldr_valid_1945.subreddit_title_post_summary.jsonl"),
            "comparisons_source": str(
                DATA
                / "tldr/openai_comparisons_valid_last10k.trl_tldr_preference_prompt_chosen_rejected.jsonl"
            ),
            "limit_train": 16,
            "limit_eval": 8,
            "max_prompt_tokens": 128,  # short sequences: the weights, not activations, should dominate
        },
        "peft": {"method": "lora", "r": 8},
        "sft": {"batch_size": 8, "micro_batch_size": 4, "n_eval_samples": 0},
        "reward": {"batch_size": 8, "micro_batch_size": 4, "n_normalise": 8},
        "ppo": {
            "total_episodes": 16,
            "rollout_batch_size": 8,
            "num_minibatches": 2,
            "micro_batch_size": 4,
            "response_length": 16,
        },
    }


def build_base(out: Path, hidden: int, layers: int) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from prefopt.models.load import load_tokenizer

    tok = load_tokenizer(str(DATA / "qwen-tokenizer"), eos_token="<|endoftext|>")
    cfg = Qwen3Config(
        vocab_size=151_936, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    from prefopt.config import build_config
    from prefopt.reward.train import train as reward
    from prefopt.sft.train import train as sft

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_base(root / "base", args.hidden, args.layers)
        prep = config(root, root / "base", "prep")
        sft(build_config(prep))
        reward(build_config(prep))
        results = {}
        for share in (True, False):
            cfg = prep | {"ppo": prep["ppo"] | {"share_base": share}}
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=True
            )
            (peak, seconds) = map(float, proc.stdout.strip().splitlines()[-1].split()[1:])
            shutil.rmtree(root / "prep" / "ppo", ignore_errors=True)
            mode = "shared_base" if share else "four_models"
            results[mode] = peak
            print(
                f"RESULT ppo_memory_{mode} "
                + json.dumps({"peak_rss_mib": round(peak), "seconds": round(seconds, 1)})
            )
        print(f"four models / shared base peak RSS: {results['four_models'] / results['shared_base']:.2f}x")


if __name__ == "__main__":
    main()
