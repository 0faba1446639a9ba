"""The `prefopt peft` lesson: where the trainable parameters of LoRA, adapters and prefixes come from.

Part 1 adapts one `nn.Linear(10, 5)` (55 parameters) with the from-scratch LoRA and bottleneck
adapter and with peft's LoRA, and shows each module tree and its count next to the formula.
Part 2 counts each method on a real architecture (Qwen3-0.6B by default) built on the meta
device: real shapes, no weights, no download. Every count is measured on a model and checked
against its closed-form formula.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, Qwen3Config

from prefopt.peft_scratch import BottleneckAdapter, LoRALinear, inject, trainable_parameters

LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"]
ADAPTER_BOTTLENECK, ADAPTER_TARGETS = 64, ["o_proj", "down_proj"]  # Houlsby's two places per layer
PREFIX_TOKENS = 20


def qwen3_0_6b_config() -> Qwen3Config:
    """Qwen3-0.6B(-Base)'s architecture, from its published config.json."""
    return Qwen3Config(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1e6,
        max_position_embeddings=40960,
    )


def _row(name: str, module: nn.Module, formula: str, formula_value: int) -> dict[str, Any]:
    trainable, total = trainable_parameters(module)
    return {
        "name": name,
        "tree": str(module),
        "trainable": trainable,
        "total": total,
        "formula": formula,
        "formula_value": formula_value,
    }


class _Wrapper(nn.Module):
    """peft adapts modules *inside* a model, so the single layer gets a one-child parent."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def toy_rows(r: int = 2, bottleneck: int = 2) -> list[dict[str, Any]]:
    """Part 1: one nn.Linear(10, 5) as it is, with scratch LoRA, a bottleneck adapter and peft's LoRA."""
    d_in, d_out = 10, 5
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out)
    lora = LoRALinear(nn.Linear(d_in, d_out), r=r, alpha=2 * r)
    lora.base_layer.requires_grad_(False)
    adapter = BottleneckAdapter(nn.Linear(d_in, d_out), dim=d_out, bottleneck=bottleneck)
    adapter.base_layer.requires_grad_(False)
    theirs = get_peft_model(_Wrapper(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["linear"]))
    return [
        _row("nn.Linear(10, 5)", base, f"in*out + out = {d_in}*{d_out} + {d_out}", d_in * d_out + d_out),
        _row(
            f"scratch LoRA, r={r}",
            lora,
            f"r*(in+out) = {r}*({d_in}+{d_out})",
            r * (d_in + d_out),
        ),
        _row(
            f"scratch bottleneck adapter, b={bottleneck}",
            adapter,
            f"2*d*b + b + d = 2*{d_out}*{bottleneck} + {bottleneck} + {d_out}",
            2 * d_out * bottleneck + bottleneck + d_out,
        ),
        _row("peft LoRA (get_peft_model)", theirs, f"r*(in+out) = {r}*({d_in}+{d_out})", r * (d_in + d_out)),
    ]


def _dims(cfg: PretrainedConfig) -> dict[str, int]:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    return {
        "h": cfg.hidden_size,
        "L": cfg.num_hidden_layers,
        "q": heads * head_dim,
        "kv": kv_heads * head_dim,
        "head_dim": head_dim,
        "mlp": cfg.intermediate_size,
        "V": cfg.vocab_size,
    }


def _base_formula(cfg: PretrainedConfig) -> tuple[str, int]:
    """Parameters of a Llama/Qwen3-style decoder without biases (Qwen3 adds q/k RMSNorms per head)."""
    d = _dims(cfg)
    h, q, kv = d["h"], d["q"], d["kv"]
    qk_norm = 2 * d["head_dim"] if cfg.model_type == "qwen3" else 0
    layer = 2 * h * q + 2 * h * kv + 3 * h * d["mlp"] + 2 * h + qk_norm
    heads = 1 if cfg.tie_word_embeddings else 2
    text = f"{heads}*V*h + L*(2*h*q + 2*h*kv + 3*h*mlp + 2*h{' + 2*head_dim' if qk_norm else ''}) + h"
    return text, heads * d["V"] * h + d["L"] * layer + h


def _method_formulas(cfg: PretrainedConfig) -> dict[str, tuple[str, int]]:
    d = _dims(cfg)
    h, q, kv, n_layers, r, b, p = d["h"], d["q"], d["kv"], d["L"], LORA_R, ADAPTER_BOTTLENECK, PREFIX_TOKENS
    lora_layer = r * ((h + q) + (h + kv) + (h + kv) + (q + h))
    mlp_params = p * kv + (kv * kv + kv) + (kv * n_layers * 2 * kv + n_layers * 2 * kv)
    return {
        "lora": (f"L*r*((h+q) + 2*(h+kv) + (q+h)) = {n_layers}*{lora_layer}", n_layers * lora_layer),
        "adapter": (f"L*2*(2*h*b + b + h), b={b}", n_layers * 2 * (2 * h * b + b + h)),
        "prefix": (f"P*L*2*kv, P={p}", p * n_layers * 2 * kv),
        "prefix_mlp": ("P*kv + (kv*kv + kv) + (kv*2*L*kv + 2*L*kv)", mlp_params),
    }


def model_rows(cfg: PretrainedConfig) -> list[dict[str, Any]]:
    """Part 2: each method's counts on `cfg`'s architecture (meta device), next to its formula."""
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(cfg)
    formulas = _method_formulas(cfg)
    built = {
        "lora": inject(copy.deepcopy(base), "lora", LORA_TARGETS, r=LORA_R, alpha=LORA_ALPHA),
        "peft_lora": get_peft_model(
            copy.deepcopy(base), LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS)
        ),
        "adapter": inject(copy.deepcopy(base), "adapter", ADAPTER_TARGETS, bottleneck=ADAPTER_BOTTLENECK),
        "prefix": inject(copy.deepcopy(base), "prefix", num_virtual_tokens=PREFIX_TOKENS),
        "prefix_mlp": inject(
            copy.deepcopy(base), "prefix", num_virtual_tokens=PREFIX_TOKENS, projection=True
        ),
    }
    labels = {
        "lora": f"LoRA r={LORA_R} on {','.join(LORA_TARGETS)} (scratch)",
        "peft_lora": f"LoRA r={LORA_R} on {','.join(LORA_TARGETS)} (peft)",
        "adapter": f"bottleneck adapter b={ADAPTER_BOTTLENECK} after o_proj and down_proj",
        "prefix": f"prefix, {PREFIX_TOKENS} virtual tokens",
        "prefix_mlp": f"prefix, {PREFIX_TOKENS} tokens + reparameterisation MLP (training only)",
    }
    rows = [{"key": "base", "method": "full fine-tuning", **_counts(base, *_base_formula(cfg))}]
    for key, model in built.items():
        formula = formulas["lora" if key == "peft_lora" else key]
        rows.append({"key": key, "method": labels[key], **_counts(model, *formula)})
    return rows


def _counts(model: nn.Module, formula: str, formula_value: int) -> dict[str, Any]:
    trainable, total = trainable_parameters(model)  # the bare base: everything trainable
    return {
        "trainable": trainable,
        "total": total,
        "percent": 100.0 * trainable / total,
        "formula": formula,
        "formula_value": formula_value,
    }


def lesson_tables(model_config: PretrainedConfig | None = None) -> dict[str, Any]:
    """All the lesson's numbers: {"toy": [rows], "model": {"name", "dims", "rows"}}."""
    cfg = model_config or qwen3_0_6b_config()
    name = "Qwen3-0.6B" if model_config is None else getattr(cfg, "name_or_path", "") or cfg.model_type
    return {"toy": toy_rows(), "model": {"name": name, "dims": _dims(cfg), "rows": model_rows(cfg)}}


def print_lesson(
    console: Console | None = None, model_config: PretrainedConfig | None = None
) -> dict[str, Any]:
    """Print the lesson with rich; returns the numbers it printed (lesson_tables)."""
    console = console or Console()
    tables = lesson_tables(model_config)
    console.rule("[bold]Parameter-efficient fine-tuning: where the trainable parameters are")
    console.print(
        "LoRA adds a low-rank update B·A beside a frozen weight (B starts at 0); a bottleneck adapter\n"
        "adds a small residual MLP after a frozen block (up-projection starts at 0); prefix tuning\n"
        "gives every attention layer learned key/value vectors to attend to. The base stays frozen."
    )
    toy = Table(title="Part 1 — one nn.Linear(10, 5)")
    for col in ("module", "trainable", "total", "formula", "= ", "ok"):
        toy.add_column(col, justify="right" if col in ("trainable", "total", "= ") else "left")
    for row in tables["toy"]:
        console.print(Panel(row["tree"], title=row["name"], expand=False))
        toy.add_row(row["name"], f"{row['trainable']:,}", f"{row['total']:,}", row["formula"], *_check(row))
    console.print(toy)
    model = tables["model"]
    dims = ", ".join(f"{k}={v:,}" for k, v in model["dims"].items())
    real = Table(title=f"Part 2 — {model['name']} on the meta device ({dims})")
    for col in ("method", "trainable", "% of total", "formula", "= ", "ok"):
        real.add_column(col, justify="left" if col in ("method", "formula", "ok") else "right")
    for row in model["rows"]:
        real.add_row(
            row["method"], f"{row['trainable']:,}", f"{row['percent']:.3f}%", row["formula"], *_check(row)
        )
    console.print(real)
    return tables


def _check(row: dict[str, Any]) -> tuple[str, str]:
    ok = row["trainable"] == row["formula_value"]
    return f"{row['formula_value']:,}", "[green]yes[/green]" if ok else "[red]NO[/red]"
