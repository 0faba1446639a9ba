"""The Qwen3 dense family (Base models) as data: real shapes for counting and sizing, no download.

Sources (looked up, not guessed):
- each size's `config.json` on the Hugging Face Hub (Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B}[-Base]): hidden_size,
  num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim=128, intermediate_size,
  vocab_size=151936, tie_word_embeddings, rope_theta=1e6 (the 2507 re-releases changed rope_theta and
  the context; these are the original April-2025 models);
- the Qwen3 Technical Report (arXiv:2505.09388), Table 1: layers, Q/KV heads, tied embeddings for
  0.6B/1.7B/4B and untied for 8B/14B; the Base model cards give a 32,768-token context.
The model cards' non-embedding parameter counts (0.44B, 1.4B, 3.6B, 6.95B, 13.2B) are checked in
tests/unit/test_plan.py against the meta-device count of these shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported lazily: `prefopt --help` stays instant
    from transformers import PretrainedConfig

    from prefopt.config import Config


class UnknownModelError(ValueError):
    """A model name or path that no known config matches."""


@dataclass(frozen=True)
class Qwen3Shape:
    """What `Qwen3Config` needs to rebuild one size of the family."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    tie_word_embeddings: bool
    head_dim: int = 128
    vocab_size: int = 151_936
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32_768


QWEN3: dict[str, Qwen3Shape] = {
    "qwen3-0.6b": Qwen3Shape(1024, 28, 16, 8, 3072, tie_word_embeddings=True),
    "qwen3-1.7b": Qwen3Shape(2048, 28, 16, 8, 6144, tie_word_embeddings=True),
    "qwen3-4b": Qwen3Shape(2560, 36, 32, 8, 9728, tie_word_embeddings=True),
    "qwen3-8b": Qwen3Shape(4096, 36, 32, 8, 12288, tie_word_embeddings=False),
    "qwen3-14b": Qwen3Shape(5120, 40, 40, 8, 17408, tie_word_embeddings=False),
}
HUB_IDS = {name: f"Qwen/Qwen3-{name.split('-')[1].upper()}-Base" for name in QWEN3}


def names() -> list[str]:
    return list(QWEN3)


def qwen3_config(name: str) -> PretrainedConfig:
    """A `Qwen3Config` for `name` ("qwen3-0.6b", or a Hub id such as "Qwen/Qwen3-8B-Base")."""
    from transformers import Qwen3Config

    key = canonical_name(name)
    if key is None:
        raise UnknownModelError(f"unknown model config {name!r}; known: {', '.join(QWEN3)}")
    fields = asdict(QWEN3[key])
    rope_theta = fields.pop("rope_theta")
    cfg = Qwen3Config(**fields, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    cfg.name_or_path = HUB_IDS[key]
    return cfg


def canonical_name(name: str) -> str | None:
    """ "Qwen/Qwen3-1.7B-Base", "qwen3-1.7b", "Qwen3-1.7B" -> "qwen3-1.7b"; None when not a known size."""
    key = name.strip().lower().split("/")[-1].removesuffix("-base")
    return key if key in QWEN3 else None


def cached_tiny_base(cache_dir: str | Path) -> Path | None:
    """The newest complete testbed tiny base under `cache_dir` (its marker is written last), or None."""
    from prefopt.models.tiny_base import MARKER

    markers = sorted(Path(cache_dir).glob(f"tiny-base-*/{MARKER}"), key=lambda p: p.stat().st_mtime)
    return markers[-1].parent if markers else None


def testbed_tiny_config(cache_dir: str | Path | None = None) -> PretrainedConfig:
    """The testbed's tiny base: the cached one's config.json when `cache_dir` holds one, else the
    `TinyBaseSpec` defaults (with the BPE's requested vocabulary, an upper bound of the trained one)."""
    from transformers import AutoConfig, Qwen3Config

    from prefopt.models.tiny_base import TinyBaseSpec

    cached = cached_tiny_base(cache_dir) if cache_dir is not None else None
    if cached is not None:
        cfg = AutoConfig.from_pretrained(str(cached))
        cfg.name_or_path = f"testbed-tiny ({cached})"
        return cfg
    s = TinyBaseSpec()
    cfg = Qwen3Config(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        intermediate_size=s.intermediate_size,
        max_position_embeddings=s.max_position_embeddings,
        tie_word_embeddings=True,
    )
    cfg.name_or_path = "testbed-tiny"
    return cfg


def model_config_for(cfg: Config, override: str | None = None) -> PretrainedConfig:
    """The architecture a run config trains: `override` (a known name), the testbed-tiny preset,
    a known Qwen3 Hub id, or a local folder's config.json. Raises UnknownModelError otherwise."""
    if override:
        return qwen3_config(override)
    if cfg.model.preset == "testbed-tiny":
        return testbed_tiny_config(cfg.model.cache_dir)
    source = cfg.model.name_or_path
    if canonical_name(source) is not None:
        return qwen3_config(source)
    if (Path(source).expanduser() / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(Path(source).expanduser()))
    raise UnknownModelError(
        f"no offline config for model {source!r}: pass --model-config one of {', '.join(QWEN3)}, "
        "or point model.name_or_path at a local folder with a config.json"
    )
