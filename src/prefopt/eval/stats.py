"""Point estimates with seeded percentile-bootstrap 95% intervals: means, win rates, paired differences.

Every number the evaluation reports is an :class:`Estimate` (value, lo, hi, n), so the report never
shows a rate without its uncertainty. Resampling is over *items* (held-out posts): the interval says
how much the number would move on another draw of posts of the same kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A statistic and its bootstrap interval over ``n`` items (``lo == hi == value`` when n <= 1)."""

    value: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def fmt(self, digits: int = 3, percent: bool = False) -> str:
        """``0.712 [0.650, 0.771]`` (or ``71.2% [65.0, 77.1]`` with ``percent``)."""
        if percent:
            return f"{100 * self.value:.1f}% [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def bootstrap(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Percentile bootstrap of ``statistic`` over the items of ``values``.

    values: [N] (or [N, K] for a statistic of paired columns). ``statistic`` maps a batch of resamples
    [n_boot, N(, K)] to [n_boot] and must also accept the original data with a leading axis of 1;
    default: the mean. Returns the statistic of the data and the (1-level)/2 and (1+level)/2 quantiles
    of its resampled values. Deterministic in ``seed``.
    """
    data = np.asarray(values, dtype=np.float64)
    stat = statistic or (lambda x: x.mean(axis=1))
    n = data.shape[0]
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    point = float(stat(data[None])[0])
    if n == 1:
        return Estimate(point, point, point, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    resampled = stat(data[idx])  # [n_boot]
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(resampled, [alpha, 1.0 - alpha])
    return Estimate(point, float(lo), float(hi), n)


def mean_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of ``values`` with its 95% bootstrap interval."""
    return bootstrap(values, n_boot=n_boot, seed=seed)


def outcomes(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-item result of a against b: 1 win, 0.5 tie, 0 loss (their mean is `text_metrics.win_rate`)."""
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def win_rate_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """How often score ``a[i]`` beats ``b[i]`` (ties count one half), with its 95% interval."""
    return bootstrap(outcomes(a, b), n_boot=n_boot, seed=seed)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of ``a[i] - b[i]`` with its 95% interval (resampling pairs keeps their correlation)."""
    return bootstrap([x - y for x, y in zip(a, b, strict=True)], n_boot=n_boot, seed=seed)
