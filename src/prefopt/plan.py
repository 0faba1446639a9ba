"""Expected peak GPU memory of each stage (SFT, reward, PPO), from one documented formula.

Everything is per GPU. Under DDP every GPU holds a full replica (no sharding is modelled), so more GPUs
shrink only the per-process rollout batch of PPO. Sizes are bytes; 1 GiB = 2**30 bytes.

Symbols: P base parameters (tied embeddings counted once); T trainable parameters of the PEFT method
(measured on the meta device; T = P for full fine-tuning); b bytes of a weight (model.dtype; `auto` is
bf16 on a GPU, so 2); L layers; h hidden size; kv = kv_heads x head_dim; m MLP size; V vocabulary.

    peak        = weights + state + max(train step, generation)     (the two phases never overlap)
    weights     = copies x P x b + adapter weights x b
    state       = trainable x (b gradient + 8 Adam moments in fp32 + 4 fp32 master copy if b < 4)
                  (+ trainable x b of DDP gradient buckets when N > 1)
    train step  = activations + logits
      activations = tokens x L x h x A,  A = 35 x b   (no checkpointing)
                  = tokens x L x h x b + tokens x h x A (gradient checkpointing: each layer keeps its
                    input; one layer's activations exist again while it is recomputed)
      logits      SFT: micro x C x V x (b + 8)   [model logits + fp32 copy + fp32 log-softmax]
                  PPO: min(512, micro x R) x V x (b + 12)   [chunked log-probs: one 512-position chunk,
                       its fp32 copy, softmax and p*z of the entropy]
                  reward: 0 (a scalar head)
    generation  = KV cache + prefill + last logits
      KV cache    = 2 x L x kv x (prompt + response) x B_gen x b
      prefill     = B_gen x prompt x (4h + 3m) x b   (one layer's no-grad working set)
      last logits = B_gen x V x (b + 8)

A = 35 x b bytes per layer, token and hidden unit is measured: the bytes autograd saves for backward in
one Qwen3 decoder layer (parameters excluded), in bf16 with SDPA attention, were 70.2 h (0.6B shape,
whose q width is 2h), 55.1 h (1.7B) and 52.6 h (8B) per token; 35 x 2 = 70 covers the family.
With checkpointing the measured saving per layer was exactly the 2h bytes of its input.

Tokens per micro-batch: SFT micro x (prompt + C); reward 2 x micro x (prompt + C) (chosen and rejected);
PPO 2 x micro x (prompt + R) (the policy and the value graphs are both alive at the backward).
C = data.max_summary_tokens, R = ppo.response_length, prompt = data.max_prompt_tokens (budgets: an upper
bound of real lengths). Copies and trainable sets per stage: SFT and reward hold one model (reward adds a
scalar head, h + 1). PPO with peft.method=lora and ppo.share_base holds ONE base (P) carrying three
adapters (policy, value, reward; 2 trainable) and a value head; otherwise four models (policy, reference,
value, reward) with the policy and the value fully trainable.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from prefopt.config import Config

if TYPE_CHECKING:
    from transformers import PretrainedConfig

GIB = 2**30
ACT_PER_BYTE = 35  # A = 35 x b bytes per (layer, token, hidden unit); see the module docstring
SFT_SAMPLE_BATCH = 32  # generate.sample's batch_size, as the SFT stage's greedy samples use it
STAGES = ("sft", "reward", "ppo")


@dataclass(frozen=True)
class Shape:
    """The model numbers the formula needs."""

    params: int
    layers: int
    hidden: int
    kv_dim: int  # kv_heads x head_dim
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> Shape:
        from prefopt.models.load import count_parameters_meta

        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(
            params=count_parameters_meta(config),
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            kv_dim=kv_heads * head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )


@dataclass(frozen=True)
class StageMemory:
    """One stage's terms (bytes per GPU); `peak` combines them as the module docstring says."""

    stage: str
    weights: int
    state: int
    activations: int
    logits: int
    generation: int

    @property
    def peak(self) -> int:
        return self.weights + self.state + max(self.activations + self.logits, self.generation)

    def as_gib(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) / GIB for f in fields(self) if f.name != "stage"}
        return out | {"peak": self.peak / GIB}


# ---------------------------------------------------------------- the terms


def weight_bytes(dtype: str) -> int:
    """Bytes of one weight on a GPU: `auto` loads bf16 there."""
    return {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}[dtype]


def state_bytes(trainable: int, b: int, gpus: int) -> int:
    """Gradient (b) + two fp32 Adam moments (8) + an fp32 master copy (4) when weights are 16-bit,
    + DDP's gradient buckets (b) on more than one GPU."""
    per_param = b + 8 + (4 if b < 4 else 0) + (b if gpus > 1 else 0)
    return trainable * per_param


def activation_bytes(tokens: int, s: Shape, b: int, checkpointing: bool) -> int:
    a = ACT_PER_BYTE * b
    if checkpointing:
        return tokens * s.layers * s.hidden * b + tokens * s.hidden * a
    return tokens * s.layers * s.hidden * a


def generation_bytes(batch: int, prompt: int, response: int, s: Shape, b: int) -> int:
    kv = 2 * s.layers * s.kv_dim * (prompt + response) * batch * b
    prefill = batch * prompt * (4 * s.hidden + 3 * s.intermediate) * b
    return kv + prefill + batch * s.vocab * (b + 8)


# ---------------------------------------------------------------- the stages


def sft_memory(cfg: Config, s: Shape, trainable: int, gpus: int = 1) -> StageMemory:
    b, d = weight_bytes(cfg.model.dtype), cfg.data
    full = cfg.peft.method == "none"
    micro = cfg.sft.micro_batch_size
    tokens = micro * (d.max_prompt_tokens + d.max_summary_tokens)
    gen_batch = min(cfg.sft.n_eval_samples, SFT_SAMPLE_BATCH)
    return StageMemory(
        "sft",
        weights=(s.params + (0 if full else trainable)) * b,
        state=state_bytes(trainable, b, gpus),
        activations=activation_bytes(tokens, s, b, cfg.model.gradient_checkpointing),
        logits=micro * d.max_summary_tokens * s.vocab * (b + 8),
        generation=generation_bytes(gen_batch, d.max_prompt_tokens, d.max_summary_tokens, s, b)
        if gen_batch
        else 0,
    )


def reward_memory(cfg: Config, s: Shape, trainable: int, gpus: int = 1) -> StageMemory:
    b, d = weight_bytes(cfg.model.dtype), cfg.data
    full = cfg.peft.method == "none"
    head = s.hidden + 1
    tokens = 2 * cfg.reward.micro_batch_size * (d.max_prompt_tokens + d.max_summary_tokens)
    return StageMemory(
        "reward",
        weights=(s.params + head + (0 if full else trainable)) * b,
        state=state_bytes(trainable + head, b, gpus),
        activations=activation_bytes(tokens, s, b, cfg.model.gradient_checkpointing),
        logits=0,
        generation=0,
    )


def ppo_shares_base(cfg: Config) -> bool:
    """Mirrors `models.roles.build_roles`: one base only for a LoRA reward model with share_base."""
    return cfg.peft.method == "lora" and cfg.ppo.share_base


def ppo_memory(cfg: Config, s: Shape, trainable: int, gpus: int = 1) -> StageMemory:
    b, p, prompt = weight_bytes(cfg.model.dtype), cfg.ppo, cfg.data.max_prompt_tokens
    heads = 2 * (s.hidden + 1)  # value head (trainable) + reward head (frozen)
    if ppo_shares_base(cfg):
        weights = (s.params + 3 * trainable + heads) * b  # one base + policy, value, reward adapters
        n_trainable = 2 * trainable + s.hidden + 1
    else:
        weights = (4 * s.params + heads) * b  # policy, reference, value, reward
        n_trainable = 2 * s.params + s.hidden + 1
    tokens = 2 * p.micro_batch_size * (prompt + p.response_length)
    from prefopt.ppo.rollout import logprob_chunk_size  # the chunk PPO really uses (bounded in bytes)

    chunk = min(logprob_chunk_size(s.vocab), p.micro_batch_size * p.response_length)
    gen_batch = min(p.rollout_batch_size // gpus, p.generation_batch_size)
    return StageMemory(
        "ppo",
        weights=weights,
        state=state_bytes(n_trainable, b, gpus),
        activations=activation_bytes(tokens, s, b, cfg.model.gradient_checkpointing),
        logits=chunk * s.vocab * (b + 12),
        generation=generation_bytes(gen_batch, prompt, p.response_length, s, b),
    )


def plan(cfg: Config, shape: Shape, trainable: int, gpus: int = 1) -> list[StageMemory]:
    """Every stage's expected memory per GPU. `trainable` = the PEFT method's trainable parameters on
    the base (see `trainable_parameters`); P for full fine-tuning."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    return [fn(cfg, shape, trainable, gpus) for fn in (sft_memory, reward_memory, ppo_memory)]


def trainable_parameters(config: PretrainedConfig, cfg: Config) -> int:
    """Trainable parameters of `cfg.peft` on the architecture `config`, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from prefopt.models.adapters import apply_peft

    with torch.device("meta"):
        model = apply_peft(AutoModelForCausalLM.from_config(config), cfg.peft)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
