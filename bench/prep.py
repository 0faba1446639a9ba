"""Build, once, what prefopt's stages read for the harness workload (run in its own process).

    python bench/prep.py            # prints the prepared folder

Run in a child process so the benchmark process's peak RSS (ru_maxrss) carries none of it.
Everything is derived from the harness artifacts (`PEER_BENCH_ARTIFACTS`), WITHOUT training:

  data/ppo_prompts.jsonl        the first 512 RL prompts as {prompt, completion} rows (PPO reads
                                the posts of an SFT source; the completion is never used)
  data/prefs/train.jsonl        the first 512 preference pairs (a folder with splits, so none of
  data/prefs/valid.jsonl        the 512 is held out); the next 32 pairs for the post-loop evaluation
  heads.safetensors             score heads exactly as the harness seeds them: reward 4321, value 8765
  full/sft/model                the harness's Qwen3 as a prefopt policy folder (method none)
  full/reward/model             trunk + reward head, full weights (PPO: four separate models)
  lora/sft/model, lora/reward/model
                                the same, the reward model as a zero-initialised LoRA adapter
                                (identical outputs), so PPO can share one base between the roles
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import harness

LORA = {
    "method": "lora",
    "r": 16,
    "alpha": 32.0,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
N_PAIRS, N_EVAL_PAIRS = 512, 32


def folder() -> Path:
    """The prepared folder for the current artifacts (keyed by their manifest hash)."""
    import hashlib

    manifest = (harness.ARTIFACTS / "manifest.json").read_bytes()
    return harness.WORK / f"prep-{hashlib.sha256(manifest).hexdigest()[:12]}"


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_data(out: Path, workload) -> None:
    prompts = workload.make_prompts(512)
    _write_jsonl(
        out / "data" / "ppo_prompts.jsonl", [{"prompt": p["prompt"], "completion": " -"} for p in prompts]
    )
    pairs = workload.make_preference_pairs(N_PAIRS + N_EVAL_PAIRS)
    _write_jsonl(out / "data" / "prefs" / "train.jsonl", pairs[:N_PAIRS])
    _write_jsonl(out / "data" / "prefs" / "valid.jsonl", pairs[N_PAIRS:])


def score_heads(common, art: Path) -> dict:
    """[1, H] score weights, drawn by the harness's own `load_score_model` (same seeds, same RNG use)."""
    return {
        role: common.load_score_model(art, seed=seed).score.weight.detach().clone().contiguous()
        for role, seed in (("reward", 4321), ("value", 8765))
    }


def write_models(out: Path, art: Path, heads: dict, lora: bool) -> None:
    import torch

    from prefopt.config import PeftConfig
    from prefopt.models.adapters import apply_peft, save_policy
    from prefopt.models.heads import ScalarHeadModel
    from prefopt.models.load import load_causal_lm, load_tokenizer
    from prefopt.reward.model import save_reward_model

    root = out / ("lora" if lora else "full")
    tok = load_tokenizer(str(art / "tokenizer"))
    sft_dir = root / "sft" / "model"
    policy = load_causal_lm(str(art / "model"), tok, dtype="float32", device="cpu")
    save_policy(policy, sft_dir, PeftConfig(method="none"), str(art / "model"), tok)
    causal = load_causal_lm(str(sft_dir), tok, dtype="float32", device="cpu")
    wrapper = apply_peft(causal, PeftConfig(**LORA)) if lora else None
    rm = ScalarHeadModel(causal)
    with torch.no_grad():
        rm.head.weight.copy_(heads["reward"])
        rm.head.bias.zero_()  # the harness's score head has no bias
    save_reward_model(rm, root / "reward" / "model", peft_wrapper=wrapper, base=sft_dir, tokenizer=tok)


def main() -> Path:
    common = harness.peer_common()
    common.quiet()
    art = common.workload.ensure_artifacts()
    out = folder()
    if (out / "READY").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from safetensors.torch import save_file

    write_data(tmp, common.workload)
    heads = score_heads(common, art)
    save_file(heads, str(tmp / "heads.safetensors"))
    for lora in (False, True):
        write_models(tmp, art, heads, lora)
    (tmp / "READY").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(main())
    sys.exit(0)
