"""Load a tokenizer and a causal LM the way every stage needs them.

Two RLHF details are enforced here, once, so no stage can forget them:

* a DEDICATED pad token, distinct from EOS. If PAD == EOS, masking the padding also masks the real EOS
  of a completion, so the policy never learns to stop and the reward is read at the wrong token.
* dropout OFF. With dropout on, the log-probs recomputed during PPO differ from the rollout's even
  before any update (ratio != 1), and the reward/value heads become noisy.

Padding side is a per-use setting, not a property of the tokenizer: training batches are right-padded
(the default here), generation batches must be LEFT-padded so every row's next token sits at the same
last position. Set `tokenizer.padding_side = "left"` around generation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

PAD_TOKEN = "<|pad|>"


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says which path and why."""


def _check_local_path(name_or_path: str) -> None:
    """Fail early, with a readable message, on a path that looks local but does not exist.

    A Hub id ("Qwen/Qwen3-0.6B-Base") has no local existence, so only strings that are clearly paths
    (absolute, relative with ./ or ../, home-relative, or more than one slash) are checked.
    """
    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"model/tokenizer path does not exist: {name_or_path}")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_tokenizer(
    name_or_path: str,
    *,
    eos_token: str | None = None,
    padding_side: str = "right",
) -> PreTrainedTokenizerBase:
    """Load a tokenizer (Hub id or local folder) with a dedicated PAD token distinct from EOS.

    `eos_token` overrides the EOS the tokenizer config declares. Example: the Qwen tokenizer files
    describe Qwen2-Instruct (eos `<|im_end|>`, pad `<|endoftext|>`), while Qwen3-Base ends text with
    `<|endoftext|>`; passing `eos_token="<|endoftext|>"` gives Base semantics, and since the pad then
    equals the EOS a new `<|pad|>` is added.

    If PAD is missing or equals EOS, `<|pad|>` is added as a special token. The tokenizer gets an
    attribute `prefopt_vocab_grew: bool` saying whether this added a token (the model's embeddings
    may then need resizing; `load_causal_lm` does that).
    """
    _check_local_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {name_or_path!r}: {_first_line(err)}") from None
    if eos_token is not None:
        if eos_token not in tok.get_vocab():
            raise ModelLoadError(f"eos_token {eos_token!r} is not in the vocabulary of {name_or_path!r}")
        tok.eos_token = eos_token
    if tok.eos_token is None:
        raise ModelLoadError(f"tokenizer {name_or_path!r} has no EOS token; pass eos_token=...")
    n_before = len(tok)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.prefopt_vocab_grew = len(tok) > n_before
    tok.padding_side = padding_side
    return tok


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """ "auto" -> bf16 on CUDA, fp32 elsewhere; otherwise a torch dtype name ("float32", "bfloat16")."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return resolved


def _zero_config_dropout(config: PretrainedConfig) -> None:
    """Set every float `*dropout*` field to 0, in the config and its sub-configs (e.g. text_config)."""
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
        elif isinstance(value, PretrainedConfig):
            _zero_config_dropout(value)


def disable_dropout(model: nn.Module) -> None:
    """Turn every kind of dropout off: nn.Dropout modules and float `*dropout*` module attributes.

    The attribute pass matters: attention layers copy `config.attention_dropout` at init and use it in
    training mode, so editing the config after loading would not be enough.
    """
    if isinstance(getattr(model, "config", None), PretrainedConfig):
        _zero_config_dropout(model.config)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(module, key, 0.0)


def _grow_embeddings(model: PreTrainedModel, new_size: int) -> None:
    """Resize to `new_size` rows, new rows = the mean of the old rows (input and untied output).

    Mean init (Hewitt 2021) keeps the new tokens' logits near the average logit, so an added PAD is
    no more likely than a typical token and does not disturb the pretrained distribution; it is
    deterministic, unlike transformers' sampled `mean_resizing`.
    """
    old_size = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is None:
                continue
            weight = emb.weight
            weight[old_size:] = weight[:old_size].float().mean(0).to(weight.dtype)
            bias = getattr(emb, "bias", None)
            if bias is not None and bias.shape[0] == new_size:
                bias[old_size:] = bias[:old_size].float().mean().to(bias.dtype)


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: str = "auto",
    device: str | None = None,
    dropout_off: bool = True,
) -> PreTrainedModel:
    """Load a causal LM (Hub id or local folder) ready for the pipeline.

    - dtype "auto": bf16 on CUDA, fp32 on CPU; device None: CUDA if available, else CPU.
    - Embeddings are grown (mean-initialised rows) when the tokenizer has more tokens than the model
      has rows; a model whose vocab is already padded (Qwen3: 151,936 rows) is left as is.
    - `config.pad_token_id` and the generation config's pad/eos follow the tokenizer, so generation
      stops at the same EOS the pipeline truncates at.
    - Dropout off (config fields and modules) unless `dropout_off=False`.
    """
    _check_local_path(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot read a model config from {name_or_path!r}: {_first_line(err)}"
        ) from None
    if dropout_off:
        _zero_config_dropout(config)  # before construction: some layers copy these values at init
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, config=config, dtype=resolve_dtype(dtype, device)
        )
    except ValueError as err:
        raise ModelLoadError(
            f"{name_or_path!r} (model_type={config.model_type!r}) is not a causal LM: {_first_line(err)}"
        ) from None
    except OSError as err:
        raise ModelLoadError(f"cannot load weights from {name_or_path!r}: {_first_line(err)}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        _grow_embeddings(model, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if dropout_off:
        disable_dropout(model)
    return model.to(device)


def set_attention(model: nn.Module, impl: str | None) -> None:
    """Use the `impl` attention kernels in a loaded model, also inside a peft or scalar-head wrapper
    (None: keep transformers' choice). The outermost transformers model sets its submodules too."""
    if impl is None:
        return
    for module in model.modules():  # pre-order: the outermost PreTrainedModel comes first
        if isinstance(module, PreTrainedModel):
            module.set_attn_implementation(impl)
            return
    raise TypeError(f"{type(model).__name__} holds no transformers model to set attention kernels on")


def count_parameters_meta(config: PretrainedConfig) -> int:
    """Parameter count of the causal LM `config` describes, built on the meta device (no memory).

    Tied weights (e.g. embeddings shared with the LM head) are counted once.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
