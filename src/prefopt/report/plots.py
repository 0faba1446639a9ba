"""PNG plots of the stages' curves, drawn from `metrics.jsonl` records only.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot): no global state, no GUI
backend, safe to call from any thread or a headless server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2")


@dataclass(frozen=True)
class Panel:
    """One plot: the metrics drawn together, a title and a file name."""

    name: str
    title: str
    keys: tuple[str, ...]
    ylabel: str = ""


# What the report draws for each stage. Keys that a run did not log are skipped; a panel with none is.
SFT_PANELS = (
    Panel("sft_loss", "SFT loss (completion tokens)", ("train/loss", "valid/loss"), "nats / token"),
    Panel("sft_lr", "SFT learning rate", ("train/lr",)),
)
PPO_PANELS = (
    Panel(
        "ppo_score",
        "Reward-model score of the rollouts",
        ("objective/score", "objective/raw_score"),
        "score",
    ),
    Panel("ppo_kl", "KL(policy || SFT) per response", ("objective/kl", "objective/kl_k3"), "nats"),
    Panel("ppo_gold", "Gold score of the rollouts (testbed truth)", ("gold/score",), "gold"),
    Panel("ppo_length", "Response length", ("response/length",), "tokens"),
    Panel("ppo_eos", "Responses that end with EOS", ("response/eos_rate",), "fraction"),
    Panel("ppo_entropy", "Policy entropy", ("policy/entropy",), "nats / token"),
    Panel("ppo_clipfrac", "Clip fractions", ("policy/clipfrac", "value/vf_clipfrac"), "fraction"),
    Panel("ppo_approx_kl", "Approx. KL between PPO epochs", ("policy/approx_kl",), "nats / token"),
    Panel("ppo_explained_variance", "Value explained variance", ("value/explained_variance",)),
    Panel("ppo_losses", "PPO losses", ("policy/loss", "value/loss"), "loss"),
)


def reward_panels(records: Sequence[dict[str, Any]]) -> tuple[Panel, ...]:
    """The reward stage's panels, from the names it logged: every loss together, every accuracy together."""
    keys = _numeric_keys(records)
    losses = tuple(k for k in keys if "loss" in k)
    accs = tuple(k for k in keys if "acc" in k and "confidence" not in k)  # per-confidence: too many lines
    panels = []
    if losses:
        panels.append(Panel("reward_loss", "Reward model loss (Bradley-Terry)", losses, "loss"))
    if accs:
        panels.append(Panel("reward_accuracy", "Reward model accuracy", accs, "accuracy"))
    return tuple(panels)


def _numeric_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool):
                keys[k] = None
    return list(keys)


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that have a finite ``key``."""
    pts = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(float(r[key]))
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def smooth(values: np.ndarray, window: int, centered: bool = False) -> np.ndarray:
    """Moving average over ``window`` points, same length as ``values`` (windows shrink at the ends).

    Trailing by default (what a training curve knew at each step); ``centered`` for locating a peak,
    which a trailing mean shifts to the right by about window / 2 points.
    """
    if window <= 1 or len(values) < 3:
        return values
    csum = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    idx = np.arange(len(values))
    back = (window - 1) // 2 if centered else window - 1
    start = np.maximum(0, idx - back)
    stop = np.minimum(len(values), idx - back + window)
    return (csum[stop] - csum[start]) / (stop - start)


def new_figure(width: float = 6.0, height: float = 3.4) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def panel_plot(records: Sequence[dict[str, Any]], panel: Panel, out_dir: Path) -> Path | None:
    """Draw ``panel`` (raw points faint, a moving average bold) to ``out_dir/<name>.png``; None when
    none of its metrics was logged."""
    drawn = [(k, *series(records, k)) for k in panel.keys]
    drawn = [(k, x, y) for k, x, y in drawn if len(x)]
    if not drawn:
        return None
    fig, ax = new_figure()
    for i, (key, x, y) in enumerate(drawn):
        color = PALETTE[i % len(PALETTE)]
        window = max(1, len(y) // 15)
        if window > 1:
            ax.plot(x, y, color=color, alpha=0.25, linewidth=1)
        ax.plot(x, smooth(y, window), color=color, linewidth=2, label=key, marker="o" if len(y) < 6 else None)
    ax.ticklabel_format(axis="y", useOffset=False)  # a flat 0.01 curve reads "0.01", not "1e-14+1e-2"
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("step")
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    ax.legend(fontsize=8, frameon=False)
    return save(fig, Path(out_dir) / f"{panel.name}.png")


def stage_plots(
    records: Sequence[dict[str, Any]], panels: Sequence[Panel], out_dir: Path
) -> list[tuple[Panel, Path]]:
    """Every panel that has data, as (panel, png path)."""
    out = []
    for panel in panels:
        path = panel_plot(records, panel, out_dir)
        if path is not None:
            out.append((panel, path))
    return out
