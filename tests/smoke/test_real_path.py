"""The real path end to end: the real Qwen tokenizer (151,936-row vocabulary), the real TL;DR posts and
human comparisons from ../shared/data, and a tiny Qwen3 trunk. SFT, reward and 2 PPO updates run."""

import pytest

from prefopt.config import build_config
from prefopt.runs import read_complete
from prefopt.tracking import read_metrics

SFT_FILE = "tldr/tldr_valid_1945.subreddit_title_post_summary.jsonl"
PREF_FILE = "tldr/openai_comparisons_valid_last10k.trl_tldr_preference_prompt_chosen_rejected.jsonl"


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory, request):
    """A tiny random Qwen3 whose embedding has the real 151,936 rows, saved with the real tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from prefopt.models.load import load_tokenizer

    data = request.getfixturevalue("shared_data")
    tok = load_tokenizer(str(data / "qwen-tokenizer"), eos_token="<|endoftext|>")
    config = Qwen3Config(vocab_size=151_936, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("qwen") / "base"
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return data, out


def test_sft_reward_ppo_on_real_tldr(qwen_tiny, tmp_path):
    from prefopt.ppo.train import train as ppo
    from prefopt.reward.train import train as reward
    from prefopt.sft.train import train as sft

    data, base = qwen_tiny
    cfg = build_config(
        {
            "name": "real", "output_dir": str(tmp_path),
            "model": {"name_or_path": str(base), "eos_token": "<|endoftext|>"},
            "data": {"sft_source": str(data / SFT_FILE), "comparisons_source": str(data / PREF_FILE),
                     "limit_train": 16, "limit_eval": 8, "max_prompt_tokens": 512},
            "peft": {"method": "lora", "r": 4},
            "sft": {"batch_size": 8, "micro_batch_size": 4, "n_eval_samples": 2, "log_every": 1},
            "reward": {"batch_size": 8, "micro_batch_size": 4, "log_every": 1, "n_normalise": 8},
            "ppo": {"total_episodes": 16, "rollout_batch_size": 8, "num_minibatches": 2, "micro_batch_size": 4,
                    "response_length": 16},
        }
    )  # fmt: skip
    sft(cfg)
    assert read_complete(cfg.run_dir / "sft")["steps"] == 2
    reward(cfg)
    assert "accuracy" in str(read_complete(cfg.run_dir / "reward"))
    ppo(cfg)
    rows = read_metrics(cfg.run_dir / "ppo" / "metrics.jsonl")
    assert len(rows) == 2 and all(r["first/ratio_mean"] == pytest.approx(1.0, abs=1e-5) for r in rows)
    assert "gold/score" not in rows[0]  # real posts have no gold labeler
