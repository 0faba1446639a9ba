"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every attention layer l gets P learned key/value vectors ("virtual tokens") that each real query
can attend to, as if the sequence began with P tokens whose keys and values were free parameters:

    attention(q, [K_prefix_l ; K], [V_prefix_l ; V])       K_prefix_l, V_prefix_l: (kv_heads, P, head_dim)

The base model is frozen; only the prefixes are trained: P * layers * 2 * kv_heads * head_dim
parameters. The paper found optimising the prefixes directly unstable and reparameterised them
through an MLP (`projection=True`): prefix = MLP(E), E: (P, token_dim), dropped after training.

How it is wired in (and why this way). peft passes the prefixes as a pre-filled KV cache
(`past_key_values`) and lengthens the attention mask. That puts the cache in the caller's hands:
every forward must build a fresh cache, real tokens are shifted to positions P..P+n-1, and
`generate()` needs its input preparation patched. Instead we register an attention function with
transformers' `AttentionInterface` (the hook that selects sdpa/eager/flash): it prepends this
layer's prefix to the keys/values it is given and one always-visible column per virtual token to
the mask, then calls transformers' own sdpa attention. So:
  * the model's own `forward` and `generate` work unchanged; the KV cache holds real tokens only;
  * real tokens keep positions 0..n-1 (the prefixes are stored after RoPE, like peft's, and carry
    no position);
  * any model built on the attention interface works (Llama, Qwen3, Mistral, ...);
  * disabled, the function is exactly transformers' sdpa path: the output equals the base model's.
Limitations: sdpa underneath (no flash-attention kernel), no sliding-window layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "prefopt_prefix"  # the name our attention function is registered under
_LINK = "_prefopt_prefix"  # attention-module attribute: (encoder, layer index)


class PrefixEncoder(nn.Module):
    """The learned key/value prefixes of every attention layer.

    Memory layout (P, layers, 2, kv_heads, head_dim), the same as peft's prefix embedding, so
    weights can be copied either way. With `projection`, an embedding (P, token_dim) goes through
    Linear(token_dim, hidden) -> tanh -> Linear(hidden, layers * 2 * token_dim), token_dim =
    kv_heads * head_dim (peft's choice for grouped-query attention).
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_virtual_tokens: int = 20,
        projection: bool = False,
        encoder_hidden_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be positive, got {num_virtual_tokens}")
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.num_virtual_tokens = num_virtual_tokens
        self.projection = projection
        token_dim = num_kv_heads * head_dim
        factory = {"device": device, "dtype": dtype}
        if projection:
            hidden = encoder_hidden_size or token_dim
            self.prefix_embedding = nn.Parameter(torch.randn(num_virtual_tokens, token_dim, **factory))
            self.prefix_mlp_in = nn.Linear(token_dim, hidden, **factory)
            self.prefix_mlp_out = nn.Linear(hidden, num_layers * 2 * token_dim, **factory)
        else:
            shape = (num_virtual_tokens, num_layers, 2, num_kv_heads, head_dim)
            # N(0, 1) like peft's nn.Embedding default; keys of this size are what q/k-normed models see.
            self.prefix = nn.Parameter(torch.randn(shape, **factory))
        self.enabled = True

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix keys and values of one layer: two (kv_heads, P, head_dim) tensors."""
        if self.projection:
            # Run the output projection only for this layer's rows: the MLP's cost is not paid
            # `layers` times over (the small first projection is recomputed, which is cheap).
            rows = slice(
                layer * 2 * self.num_kv_heads * self.head_dim,
                (layer + 1) * 2 * self.num_kv_heads * self.head_dim,
            )
            hidden = torch.tanh(self.prefix_mlp_in(self.prefix_embedding))
            out = F.linear(hidden, self.prefix_mlp_out.weight[rows], self.prefix_mlp_out.bias[rows])
            kv = out.view(self.num_virtual_tokens, 2, self.num_kv_heads, self.head_dim)
        else:
            kv = self.prefix[:, layer]  # (P, 2, kv_heads, head_dim)
        kv = kv.permute(1, 2, 0, 3)  # (2, kv_heads, P, head_dim)
        return kv[0], kv[1]

    def extra_repr(self) -> str:
        return (
            f"num_virtual_tokens={self.num_virtual_tokens}, layers={self.num_layers}, "
            f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, projection={self.projection}"
        )


def _prefix_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, n_prefix: int, device) -> torch.Tensor:
    """The attention mask with `n_prefix` always-visible columns in front: (b, 1, q, n_prefix + kv).

    transformers skips the mask (None) when sdpa's own causal flag is enough; we rebuild exactly what
    that flag means (attend to all when q_len == 1, else upper-left causal) before lengthening it.
    """
    if mask is None:
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        if q_len > 1:
            mask = mask.tril()
        mask = mask[None, None]
    visible = True if mask.dtype == torch.bool else 0.0  # bool masks keep True; additive masks add 0
    prefix = torch.full((*mask.shape[:-1], n_prefix), visible, dtype=mask.dtype, device=mask.device)
    return torch.cat([prefix, mask], dim=-1)


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: sdpa over [prefix ; keys] and [prefix ; values].

    query: (b, heads, q, d); key, value: (b, kv_heads, kv, d); attention_mask: (b, 1, q, kv) or None.
    """
    link = module.__dict__.get(_LINK)
    if link is not None and link[0].enabled:
        encoder, layer = link
        pk, pv = encoder.layer_kv(layer)
        batch = key.shape[0]
        attention_mask = _prefix_mask(
            attention_mask, query.shape[2], key.shape[2], encoder.num_virtual_tokens, query.device
        )
        key = torch.cat([pk.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_attention() -> None:
    """Make `ATTN_IMPLEMENTATION` a valid `attn_implementation` (idempotent)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)  # same masks as sdpa


def attach_prefix(model: nn.Module, attention_modules: list[nn.Module], **hyper) -> PrefixEncoder:
    """Give each attention module (in layer order) its slice of a new PrefixEncoder.

    hyper: num_virtual_tokens, projection, encoder_hidden_size. The encoder is returned for the
    caller to register on the model (so it is saved and trained with it).
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    like = next(model.parameters())
    encoder = PrefixEncoder(
        num_layers=len(attention_modules),
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        device=like.device,
        dtype=like.dtype,
        **hyper,
    )
    for layer, attn in enumerate(attention_modules):
        # A plain attribute, not a registered submodule: the encoder must appear once in the state dict.
        attn.__dict__[_LINK] = (encoder, layer)
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return encoder
