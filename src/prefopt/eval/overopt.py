"""Over-optimisation: the reward model's score and the gold score against KL to the SFT policy.

Along a PPO run the policy drifts away from SFT (KL grows). The proxy (reward model) score keeps
rising; the true (gold, testbed only) score first rises with it, then peaks and falls: the policy
found what the reward model likes but the truth does not (Gao et al. 2022, "Scaling laws for reward
model overoptimization"). Two views:

- :func:`plot_run_curve`: one run's updates, from `ppo/metrics.jsonl` (objective/kl, objective/raw_score,
  gold/score);
- :func:`plot_sweep`: one point per run of a sweep over `ppo.kl_coef` (each run's final KL, reward-model
  score and gold score), so the beta that stops at the top of the gold curve can be read off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from prefopt.report.plots import PALETTE, new_figure, save, smooth
from prefopt.tracking import read_metrics

KL_KEY = "objective/kl"
RM_KEYS = ("objective/raw_score", "objective/score")  # raw = before the missing-EOS rule
GOLD_KEY = "gold/score"


@dataclass(frozen=True)
class Curve:
    """Per PPO update: KL to SFT, reward-model score, gold score (NaN where not logged)."""

    kl: np.ndarray
    rm: np.ndarray
    gold: np.ndarray

    @property
    def has_gold(self) -> bool:
        return bool(np.isfinite(self.gold).any())


def run_curve(ppo_dir: Path) -> Curve | None:
    """The (kl, rm, gold) series of a PPO stage folder; None when it has no metrics with a KL."""
    path = Path(ppo_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [r for r in read_metrics(path) if KL_KEY in r]
    if not records:
        return None
    rm_key = next((k for k in RM_KEYS if any(k in r for r in records)), RM_KEYS[0])

    def column(key: str) -> np.ndarray:
        return np.array([float(r.get(key, math.nan)) for r in records])

    return Curve(column(KL_KEY), column(rm_key), column(GOLD_KEY))


def _window(n: int) -> int:
    return max(1, n // 10) | 1  # odd: a centred mean keeps a symmetric peak where it is


def gold_peak(curve: Curve) -> tuple[float, float] | None:
    """(KL, smoothed gold) where the smoothed gold score is highest: where optimising the proxy stopped
    paying; None without gold scores."""
    if not curve.has_gold:
        return None
    order = np.argsort(curve.kl, kind="stable")
    kl, gold = curve.kl[order], curve.gold[order]
    ok = np.isfinite(gold)
    smoothed = smooth(gold[ok], _window(len(kl)), centered=True)
    i = int(np.argmax(smoothed))
    return float(kl[ok][i]), float(smoothed[i])


def plot_run_curve(ppo_dir: Path, out_png: Path) -> Path | None:
    """Reward-model score (left axis) and gold score (right axis) against KL, one point per update,
    with moving averages; the gold peak is marked. None when the run logged no KL."""
    curve = run_curve(ppo_dir)
    if curve is None:
        return None
    order = np.argsort(curve.kl, kind="stable")
    kl = curve.kl[order]
    window = _window(len(kl))
    fig, ax = new_figure(6.4, 3.8)
    ax.scatter(kl, curve.rm[order], s=10, color=PALETTE[0], alpha=0.35)
    ax.plot(
        kl,
        smooth(curve.rm[order], window, centered=True),
        color=PALETTE[0],
        linewidth=2,
        label="reward model (proxy)",
    )
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("reward-model score", color=PALETTE[0])
    handles, labels = ax.get_legend_handles_labels()
    if curve.has_gold:
        ax2 = ax.twinx()
        ax2.spines["top"].set_visible(False)
        ok = np.isfinite(curve.gold[order])
        gold = smooth(curve.gold[order][ok], window, centered=True)
        ax2.scatter(kl[ok], curve.gold[order][ok], s=10, color=PALETTE[2], alpha=0.35)
        ax2.plot(kl[ok], gold, color=PALETTE[2], linewidth=2, label="gold (truth)")
        peak_kl, peak_gold = gold_peak(curve)
        ax2.axvline(peak_kl, color="#6b7280", linestyle="--", linewidth=1)
        ax2.annotate(
            f"gold peaks at KL {peak_kl:.1f}",
            (peak_kl, peak_gold),
            xytext=(6, -14),
            textcoords="offset points",
            fontsize=8,
            color="#374151",
        )
        ax2.set_ylabel("gold score", color=PALETTE[2])
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title("Over-optimisation: proxy vs truth as the policy moves away from SFT", fontsize=10)
    fig.legend(handles, labels, fontsize=8, frameon=False, loc="outside lower center", ncols=2)
    return save(fig, out_png)


# ------------------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its KL coefficient and where it ended."""

    run: str
    kl_coef: float
    kl: float
    rm: float
    gold: float
    source: str  # "eval" (eval/results.json) or "ppo" (mean of the last PPO updates)


def sweep_point(run_dir: Path, last: int = 5) -> SweepPoint | None:
    """Where a run ended: the PPO column of `eval/results.json` when it exists (held-out, low
    temperature), else the mean of the last ``last`` PPO updates. None without either."""
    run_dir = Path(run_dir)
    coef = _kl_coef(run_dir)
    results = run_dir / "eval" / "results.json"
    if results.is_file():
        ppo = json.loads(results.read_text()).get("policies", {}).get("ppo")
        if ppo:
            return SweepPoint(
                run_dir.name,
                coef,
                _value(ppo.get("kl_to_sft")),
                _value(ppo.get("reward")),
                _value(ppo.get("gold")),
                "eval",
            )
    curve = run_curve(run_dir / "ppo")
    if curve is None:
        return None

    def tail(x: np.ndarray) -> float:
        x = x[-last:]
        x = x[np.isfinite(x)]
        return float(x.mean()) if len(x) else math.nan

    return SweepPoint(run_dir.name, coef, tail(curve.kl), tail(curve.rm), tail(curve.gold), "ppo")


def plot_sweep(run_dirs: Sequence[Path], out_png: Path) -> Path | None:
    """One point per run (labelled with its beta): reward-model score and gold score against final KL.
    None when no run has PPO results."""
    points = sorted(
        (p for p in (sweep_point(Path(d)) for d in run_dirs) if p is not None), key=lambda p: p.kl
    )
    if not points:
        return None
    kl = np.array([p.kl for p in points])
    fig, ax = new_figure(6.4, 3.8)
    ax.plot(kl, [p.rm for p in points], "o-", color=PALETTE[0], label="reward model (proxy)")
    for p in points:
        ax.annotate(f"β={p.kl_coef:g}", (p.kl, p.rm), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel("final KL(policy || SFT), nats per response")
    ax.set_ylabel("reward-model score", color=PALETTE[0])
    handles, labels = ax.get_legend_handles_labels()
    gold = np.array([p.gold for p in points])
    if np.isfinite(gold).any():
        ax2 = ax.twinx()
        ax2.spines["top"].set_visible(False)
        ok = np.isfinite(gold)
        ax2.plot(kl[ok], gold[ok], "s-", color=PALETTE[2], label="gold (truth)")
        ax2.set_ylabel("gold score", color=PALETTE[2])
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title("KL-coefficient sweep: where each run ended", fontsize=10)
    fig.legend(handles, labels, fontsize=8, frameon=False, loc="outside lower center", ncols=2)
    return save(fig, out_png)


def _kl_coef(run_dir: Path) -> float:
    for cfg_path in (run_dir / "ppo" / "config.yaml", run_dir / "config.yaml"):
        if cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            coef = (cfg.get("ppo") or {}).get("kl_coef")
            if coef is not None:
                return float(coef)
    return math.nan


def _value(entry) -> float:
    if isinstance(entry, dict):
        return float(entry.get("value", math.nan))
    return float(entry) if isinstance(entry, int | float) else math.nan
