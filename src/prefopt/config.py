"""One config for the whole pipeline: a YAML file with sections, `key=value` overrides, strict validation.

Every field carries its documentation as an attribute docstring (shown by `prefopt config show`).
Unknown keys, wrong types and impossible combinations stop a run before any work, with one message
that names the key. All derived sizes (gradient accumulation, minibatch counts, updates) are computed
in `derive()` and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A bad config: the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = "Qwen/Qwen3-0.6B-Base"
    """Hub id or local folder of the base causal LM (ignored when `preset` builds one)."""
    preset: Literal["none", "testbed-tiny"] = "none"
    """`testbed-tiny` builds, pretrains and caches a tiny Qwen3 on the testbed corpus (offline)."""
    tokenizer: str | None = None
    """Tokenizer id or folder; defaults to `name_or_path`."""
    eos_token: str | None = None
    """Override the tokenizer's EOS (Qwen3-Base ends text with `<|endoftext|>`)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: `auto` = bf16 on GPU, fp32 on CPU."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast for every stage's forward passes: `auto` = bf16 on GPU, none on CPU. (TRL's configs
    default to `bf16=True`, which autocasts even on CPU; set `bf16` to compare like for like.)"""
    pad_to_multiple_of: int | None = Field(None, gt=0)
    """Round each batch's sequence width up to a multiple of this (`None` = 16 under mixed precision, 1
    without). Under bf16 on CPU, oneDNN builds and caches a kernel for every new matmul shape, about
    50 ms and tens of MiB each: few distinct widths make bf16 faster than fp32 instead of slower."""
    attn_implementation: (
        Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None
    ) = None
    """Attention kernels of the SFT, reward and PPO models (transformers' `attn_implementation`; None =
    its default, SDPA). A kernel choice only: outputs are equal to float tolerance. GPU users may want
    `flash_attention_2`; on CPU, `eager` trains short sequences faster but generates slower
    (docs/performance.md)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~25% slower."""
    tiny_pretrain_steps: int = Field(300, gt=0)
    """`testbed-tiny` only: optimizer steps of the brief LM pretraining on posts (16 x 256 tokens each)."""
    tiny_pretrain_seconds: float | None = Field(None, gt=0)
    """`testbed-tiny` only: optional wall-clock cap on that pretraining (makes the base machine-dependent)."""
    cache_dir: str = ".cache/prefopt"
    """Where the `testbed-tiny` base is cached, so a second run skips building it."""


class DataConfig(_Section):
    sft_source: str = "testbed"
    """`testbed`, a Hub dataset id, or a local .jsonl/.json/.parquet/.csv file or folder."""
    comparisons_source: str = "testbed"
    """Human (or testbed) comparisons: same kinds of source as `sft_source`."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: str = "valid"
    """Held-out split used for evaluation."""
    layout: str | None = None
    """Force a layout (e.g. `openai_raw`, `prompt_chosen_rejected`); auto-detected from the columns when unset."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed row stops the run (`error`) or is skipped and counted in a warning (`skip`)."""
    max_prompt_tokens: int = Field(512, gt=16)
    """Prompt budget: the post is cut at its last newline / sentence end until the prompt fits."""
    max_summary_tokens: int = Field(53, gt=1)
    """Longest reference completion kept for SFT (tokens, EOS included); also the PPO response budget."""
    limit_train: int | None = Field(None, gt=0)
    """Use only the first N training rows (None = all)."""
    limit_eval: int | None = Field(None, gt=0)
    """Use only the first N held-out rows (None = all)."""
    testbed_summaries_per_post: int = Field(2, ge=2, le=7)
    """Testbed comparisons only: summaries written per post, every pair among them labelled (2 = one
    comparison per post; 4 = 6 per post, the shape of OpenAI's TL;DR comparisons)."""


class PeftConfig(_Section):
    method: Literal["none", "lora", "lora-scratch", "adapter", "prefix"] = "lora"
    """`none` = full fine-tuning; `lora` = the peft library; `lora-scratch`, `adapter`, `prefix` = prefopt's own modules."""
    r: int = Field(8, gt=0)
    """LoRA rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA path (kept 0 in RM and PPO: dropout off is an RLHF detail)."""
    target_modules: list[str] | None = None
    """Module-name suffixes that get the method; None = its default (LoRA: q,k,v,o_proj; adapter: o_proj,
    down_proj; prefix: every self_attn)."""
    adapter_size: int = Field(16, gt=0)
    """Bottleneck width of the adapter method."""
    prefix_tokens: int = Field(8, gt=0)
    """Number of virtual tokens of prefix tuning."""
    merge_on_save: bool = False
    """Also save merged full weights next to the adapter."""


class _Optim(_Section):
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Fraction of the optimizer steps spent warming up linearly."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    batch_size: int = Field(32, gt=0)
    """Examples per optimizer step, over all processes."""
    micro_batch_size: int = Field(8, gt=0)
    """Examples per forward pass on one process; batch_size must be a multiple of micro_batch_size x processes."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N optimizer steps (0 = only at the end)."""
    keep_last: int = Field(2, gt=0)
    """Checkpoints kept."""
    log_every: int = Field(10, gt=0)
    """Log metrics every N optimizer steps."""


class SFTConfig(_Optim):
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (fractions allowed)."""
    max_seconds: float | None = Field(None, gt=0)
    """Stop after this wall-clock budget (the testbed demo uses it to fit its time)."""
    eval_every: int = Field(0, ge=0)
    """Validation loss every N steps (0 = only at the end)."""
    n_eval_samples: int = Field(64, ge=0)
    """Held-out posts to sample greedily at the end (ROUGE, and gold score on the testbed)."""


class RewardConfig(_Optim):
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate (AdamW)."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the comparisons."""
    max_seconds: float | None = Field(None, gt=0)
    """Stop after this wall-clock budget."""
    head_only_lr_scale: float = Field(1.0, gt=0)
    """Learning-rate multiplier of the scalar head."""
    n_normalise: int = Field(512, gt=0)
    """Reference summaries of the SFT training data whose mean reward is set to 0 after training (the bias)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """When `data.comparisons_source` is one file (no splits), the share of its posts held out for
    evaluation; split by post, so no post is both trained and evaluated on."""
    fill_missing: dict[str, str] = {}
    """Placeholders for null post fields of comparisons, e.g. {subreddit: "", title: ""} for OpenAI's raw
    727-row file; empty = such rows are bad rows."""
    calibration_bins: int = Field(10, gt=1)
    """Equal-width bins of predicted P(chosen) in the calibration table and reliability plot."""


class PPOConfig(_Section):
    total_episodes: int = Field(2048, gt=0)
    """Responses generated over the whole run."""
    rollout_batch_size: int = Field(64, gt=0)
    """Prompts per rollout (one PPO update), over all processes."""
    num_minibatches: int = Field(4, gt=0)
    """Minibatches per PPO epoch (one optimizer step each)."""
    micro_batch_size: int = Field(16, gt=0)
    """Sequences per forward/backward on one process (gradient accumulation fills a minibatch)."""
    generation_batch_size: int = Field(64, gt=0)
    """Prompts sampled at once during a rollout (bounds the KV cache; the rollout is sampled in chunks)."""
    ppo_epochs: int = Field(4, gt=0)
    """Passes over each rollout batch."""
    lr: float = Field(3e-5, gt=0)
    """Learning rate of policy and value (AdamW)."""
    schedule: Literal["linear", "constant"] = "linear"
    """Learning-rate decay over the updates."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature; log-probs are always recomputed from logits / temperature."""
    response_length: int = Field(53, gt=1)
    """Fixed token budget of each response; truncated after the first EOS."""
    missing_eos_score: float | None = -1.0
    """Score given to a response with no EOS (None = score it as it is)."""
    kl_coef: float = Field(0.05, ge=0)
    """beta of the per-token KL penalty (initial value when adaptive)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """KL estimator in the reward: k1 = log p - log p_ref, k3 = (r - 1) - log r."""
    adaptive_kl: bool = False
    """Adapt beta toward `target_kl` (Ziegler et al. 2019)."""
    target_kl: float = Field(6.0, gt=0)
    """Target sequence KL (nats) of the adaptive controller."""
    kl_horizon: int = Field(10000, gt=0)
    """Horizon (episodes) of the adaptive controller."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    clip_range: float = Field(0.2, gt=0)
    """Policy ratio clip."""
    clip_range_value: float = Field(0.2, gt=0)
    """Value clip around the rollout's values."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss."""
    whiten_rewards: bool = False
    """Whiten per-token rewards over real tokens before GAE."""
    approx_kl_stop: float | None = Field(None, gt=0)
    """Stop an update's remaining epochs when approx-KL exceeds this."""
    max_bad_updates: int = Field(3, gt=0)
    """Consecutive NaN/inf updates before the run stops (the last good checkpoint stays)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N updates (0 = only at the end)."""
    keep_last: int = Field(2, gt=0)
    """Checkpoints kept."""
    sample_every: int = Field(5, gt=0)
    """Write a table of samples every N updates."""
    share_base: bool = True
    """With LoRA: one frozen copy of the base weights serves policy, reference, value and reward."""


class EvalConfig(_Section):
    n_posts: int = Field(200, gt=0)
    """Held-out posts evaluated."""
    temperature: float = Field(0.01, ge=0)
    """Sampling temperature of the evaluated policies (0 = greedy)."""
    bootstrap: int = Field(1000, gt=0)
    """Bootstrap resamples for the 95% intervals."""
    judge: str | None = None
    """Optional judge: an OpenAI-compatible URL, or a local Hugging Face model folder."""


class Config(_Section):
    name: str = "run"
    """Run name: outputs go to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Parent folder of run folders."""
    seed: int = 0
    """Global seed (each process adds its rank)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    peft: PeftConfig = PeftConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        if self.peft.method == "prefix" and self.model.gradient_checkpointing:
            raise ValueError("peft.method=prefix cannot be combined with model.gradient_checkpointing=true")
        if self.peft.method == "prefix" and self.model.attn_implementation is not None:
            raise ValueError(
                "peft.method=prefix brings its own attention: leave model.attn_implementation unset"
            )
        if self.data.testbed_summaries_per_post != 2 and self.data.comparisons_source != "testbed":
            raise ValueError(
                "data.testbed_summaries_per_post shapes the testbed's comparisons; "
                f"data.comparisons_source={self.data.comparisons_source!r} is not the testbed"
            )
        if self.model.preset == "testbed-tiny" and self.data.sft_source != "testbed":
            pass  # allowed: a tiny base on real data is a valid smoke test
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- derived sizes, computed once


@dataclass(frozen=True)
class Derived:
    """Sizes that follow from the config and the number of processes."""

    sft_grad_accum: int
    reward_grad_accum: int
    ppo_updates: int
    ppo_local_rollout: int
    ppo_minibatch: int
    ppo_grad_accum: int
    pad_multiple: int = 1
    """Batch widths are rounded up to a multiple of this (`model.pad_to_multiple_of`)."""


def _exact(num: int, den: int, what: str) -> int:
    if den <= 0 or num % den:
        raise ConfigError(f"{what}: {num} is not divisible by {den}")
    return num // den


def derive(cfg: Config, num_processes: int = 1, mixed_precision: str = "no") -> Derived:
    """All derived sizes, with exact-division checks that name the keys involved. `mixed_precision` is
    the accelerator's (resolved) one: it sets the default batch-width multiple."""
    p = num_processes
    sft_acc = _exact(
        cfg.sft.batch_size,
        cfg.sft.micro_batch_size * p,
        f"sft.batch_size / (sft.micro_batch_size x {p} processes)",
    )
    rm_acc = _exact(
        cfg.reward.batch_size,
        cfg.reward.micro_batch_size * p,
        f"reward.batch_size / (reward.micro_batch_size x {p} processes)",
    )
    local = _exact(cfg.ppo.rollout_batch_size, p, f"ppo.rollout_batch_size / {p} processes")
    mini = _exact(local, cfg.ppo.num_minibatches, "ppo.rollout_batch_size per process / ppo.num_minibatches")
    acc = _exact(mini, cfg.ppo.micro_batch_size, "ppo minibatch (per process) / ppo.micro_batch_size")
    updates = _exact(
        cfg.ppo.total_episodes, cfg.ppo.rollout_batch_size, "ppo.total_episodes / ppo.rollout_batch_size"
    )
    mult = cfg.model.pad_to_multiple_of or (16 if mixed_precision in ("bf16", "fp16") else 1)
    return Derived(sft_acc, rm_acc, updates, local, mini, acc, mult)


# ---------------------------------------------------------------- loading, overrides, errors


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["ppo.kl_coef=0.1", "peft.method=none"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. ppo.kl_coef=0.1")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            section = _section_of(e["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else ""
            lines.append(f"{key}: unknown key (allowed here: {allowed})")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _section_of(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Validate a nested dict plus `key=value` overrides into a Config, or raise ConfigError."""
    merged = _merge(data or {}, parse_overrides(overrides or []))
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None = all defaults) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return build_config(data, overrides)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (written into every run folder)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe(section: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every field, for `prefopt config show`."""
    rows = []
    for name, field in section.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe(ann, key + "."))
            continue
        if get_origin(ann) is Literal:
            type_name = " | ".join(str(a) for a in get_args(ann))
        else:
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append((key, type_name, repr(field.default), field.description or ""))
    return rows
