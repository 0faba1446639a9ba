"""Suite-wide test settings.

One intra-op thread: the models in tests are tiny, and on a loaded 2-core machine two threads per
process thrash (measured ~10x slower under load), while one thread costs little when idle.
"""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_qwen3():
    """A factory of tiny seeded `Qwen3ForCausalLM`s in eval mode: `tiny_qwen3(vocab_size=50, seed=0, **config)`
    (2 layers, hidden 32, GQA 2:1, pad id 0; keyword arguments override any `Qwen3Config` field)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    def make(vocab_size: int = 50, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        config = dict(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, intermediate_size=64, pad_token_id=0,
        )  # fmt: skip
        return Qwen3ForCausalLM(Qwen3Config(**(config | overrides))).eval()

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repo root; tests that need it skip with a clear reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
