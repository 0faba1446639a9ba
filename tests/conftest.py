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
def shared_data() -> Path:
    """`../shared/data` beside the repo root; tests that need it skip with a clear reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
