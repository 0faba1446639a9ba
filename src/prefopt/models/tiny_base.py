"""The testbed's tiny base model: a byte-level BPE tokenizer + a ~1M-parameter Qwen3, pretrained briefly.

Offline there is no pretrained base, so the testbed makes one: a tokenizer trained on the testbed
corpus and a `Qwen3ForCausalLM` (the real architecture, tiny config) trained as a plain next-token LM
on posts WITHOUT summaries, so it knows the language but not the task. The folder it writes is an
ordinary Hugging Face checkpoint; every stage loads it through `load_tokenizer` / `load_causal_lm`.

`ensure_tiny_base` caches it under a fingerprint of everything that determines it, and writes a marker
file last, so a complete cached base is reused and a partial one rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MARKER = "tiny_base.json"
BUILD_VERSION = 1  # bump when the recipe changes, so stale caches are rebuilt


@dataclass(frozen=True)
class TinyBaseSpec:
    """Everything besides the corpus that determines the tiny base (part of the cache fingerprint)."""

    vocab_size: int = 4000
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    max_position_embeddings: int = 1024
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05


def train_tokenizer(texts: list[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """Byte-level BPE on `texts`: any string round-trips exactly (no normaliser, no prefix space).

    Special tokens: EOS `<|endoftext|>` (id 0) and a distinct PAD `<|pad|>` (id 1); no BOS.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def tiny_qwen3_config(spec: TinyBaseSpec, tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    """A small Qwen3 (tied embeddings, GQA 4:2) sized to the tokenizer."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,  # as Qwen3-Base: no BOS, EOS doubles as document start
        pad_token_id=tokenizer.pad_token_id,
    )


def _token_stream(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """All texts tokenised, each followed by EOS, concatenated: [N] int64."""
    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(row)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _lr_factor(progress: float, warmup_frac: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak; `progress` in [0, 1]."""
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    t = (progress - warmup_frac) / max(1.0 - warmup_frac, 1e-8)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


@dataclass
class PretrainStats:
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    first_loss: float
    final_loss: float


def pretrain(
    model: Qwen3ForCausalLM,
    stream: torch.Tensor,
    spec: TinyBaseSpec,
    *,
    seed: int,
    max_steps: int,
    max_seconds: float | None = None,
    log: Callable[[str], None] = print,
) -> PretrainStats:
    """Next-token LM on random windows of `stream` [N]; stops at `max_steps` or `max_seconds`.

    The LR schedule follows progress = max(step / max_steps, elapsed / max_seconds), so a time budget
    still gets a full warmup-then-decay schedule.
    """
    seq_len = min(spec.seq_len, len(stream) - 1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=spec.weight_decay)
    model.train()
    start, step, losses, logged_tenths = time.perf_counter(), 0, [], 0
    while True:
        elapsed = time.perf_counter() - start
        progress = max(step / max_steps, elapsed / max_seconds if max_seconds else 0.0)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = spec.lr * _lr_factor(progress, spec.warmup_frac)
        starts = torch.randint(0, len(stream) - seq_len, (spec.batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])  # [B, T]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        secs = time.perf_counter() - start
        tenths = int(10 * max(step / max_steps, secs / max_seconds if max_seconds else 0.0))
        if tenths > logged_tenths or step == 1:  # a line per 10% of the budget, steps or seconds
            logged_tenths = max(tenths, logged_tenths)
            tps = step * spec.batch_size * seq_len / max(secs, 1e-9)
            log(
                f"pretrain {min(tenths, 10) * 10:3d}%  step {step:5d}  loss {losses[-1]:.3f}  "
                f"{tps / 1e3:6.1f}k tok/s  {secs:5.1f}s"
            )
    model.eval()
    seconds = time.perf_counter() - start
    tokens = step * spec.batch_size * seq_len
    tail = losses[-max(1, len(losses) // 10) :]
    return PretrainStats(step, tokens, seconds, tokens / max(seconds, 1e-9), losses[0], sum(tail) / len(tail))


def _default_texts(corpus_size: int, seed: int) -> list[str]:
    from prefopt.data.testbed import corpus  # lazy: the testbed is a separate module

    return list(corpus(corpus_size, seed))


@dataclass
class TinyBase:
    model: Qwen3ForCausalLM
    tokenizer: PreTrainedTokenizerFast
    stats: PretrainStats


def train_tiny_base(
    texts: list[str],
    *,
    seed: int = 0,
    pretrain_steps: int = 300,
    pretrain_seconds: float | None = None,
    spec: TinyBaseSpec = TinyBaseSpec(),
    log: Callable[[str], None] = print,
) -> TinyBase:
    """Train the tokenizer on `texts`, build the tiny Qwen3 (seeded) and pretrain it on the same texts."""
    if not texts:
        raise ValueError("the tiny base needs a non-empty list of texts")
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    model = Qwen3ForCausalLM(tiny_qwen3_config(spec, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    stream = _token_stream(texts, tokenizer)
    log(f"tiny base: vocab {len(tokenizer)}, {n_params / 1e6:.2f}M params, {len(stream):,} corpus tokens")
    stats = pretrain(
        model, stream, spec, seed=seed, max_steps=pretrain_steps, max_seconds=pretrain_seconds, log=log
    )
    log(
        f"tiny base: {stats.steps} steps, loss {stats.first_loss:.2f} -> {stats.final_loss:.2f}, "
        f"{stats.tokens_per_s:,.0f} tok/s"
    )
    return TinyBase(model, tokenizer, stats)


def save_tiny_base(base: TinyBase, out_dir: Path, fingerprint: str = "") -> Path:
    """save_pretrained model + tokenizer into a fresh `out_dir`; the marker file is written LAST."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    base.model.save_pretrained(out_dir)
    base.tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in base.model.parameters())
    marker = {"fingerprint": fingerprint, "n_params": n_params, "vocab_size": len(base.tokenizer)}
    marker.update(asdict(base.stats))
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2))  # its presence means "complete"
    return out_dir


def build_tiny_base(
    out_dir: Path,
    *,
    texts: list[str] | None = None,
    seed: int = 0,
    pretrain_steps: int = 300,
    pretrain_seconds: float | None = None,
    corpus_size: int = 4000,
    spec: TinyBaseSpec = TinyBaseSpec(),
    log: Callable[[str], None] = print,
    fingerprint: str = "",
) -> Path:
    """Train the tokenizer, build and pretrain the tiny Qwen3, save both to `out_dir` (marker last).

    `texts` defaults to `prefopt.data.testbed.corpus(corpus_size, seed)` (posts without summaries).
    The budget is `pretrain_steps`, or `pretrain_seconds` of wall clock if that comes first.
    """
    texts = _default_texts(corpus_size, seed) if texts is None else texts
    base = train_tiny_base(
        texts, seed=seed, pretrain_steps=pretrain_steps, pretrain_seconds=pretrain_seconds, spec=spec, log=log
    )
    return save_tiny_base(base, out_dir, fingerprint)


def tiny_base_fingerprint(
    texts: list[str], seed: int, pretrain_steps: int, pretrain_seconds: float | None, spec: TinyBaseSpec
) -> str:
    """Hash of the recipe version, corpus and every build setting."""
    h = hashlib.sha256()
    params = {
        "v": BUILD_VERSION,
        "seed": seed,
        "steps": pretrain_steps,
        "seconds": pretrain_seconds,
        **asdict(spec),
    }
    h.update(json.dumps(params, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def read_marker(base_dir: Path) -> dict | None:
    """The marker of a complete base folder, or None if the folder is absent or partial."""
    try:
        return json.loads((Path(base_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_tiny_base(
    cache_dir: Path,
    *,
    texts: list[str] | None = None,
    seed: int = 0,
    pretrain_steps: int = 300,
    pretrain_seconds: float | None = None,
    corpus_size: int = 4000,
    spec: TinyBaseSpec = TinyBaseSpec(),
    log: Callable[[str], None] = print,
) -> Path:
    """Path of a complete tiny base under `cache_dir`, building it only when no complete copy exists.

    The folder is `cache_dir/tiny-base-<fingerprint>`; it is built in a temporary sibling and renamed
    into place, so a crash never leaves a half-written folder under the final name, and a folder
    without a matching marker (partial, or from an interrupted older layout) is rebuilt.
    """
    texts = _default_texts(corpus_size, seed) if texts is None else texts
    fp = tiny_base_fingerprint(texts, seed, pretrain_steps, pretrain_seconds, spec)
    final = Path(cache_dir) / f"tiny-base-{fp}"
    marker = read_marker(final)
    if marker is not None and marker.get("fingerprint") == fp:
        log(f"tiny base: reusing {final}")
        return final
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    build_tiny_base(
        tmp, texts=texts, seed=seed, pretrain_steps=pretrain_steps, pretrain_seconds=pretrain_seconds,
        spec=spec, log=log, fingerprint=fp,
    )  # fmt: skip
    done = read_marker(final)
    if done is not None and done.get("fingerprint") == fp:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
