"""Bootstrap intervals and win rates, against hand-worked values and textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefopt.eval import stats
from prefopt.eval.text_metrics import win_rate


def test_outcomes_and_win_rate_by_hand():
    a, b = [3, 1, 2, 2, 5], [1, 2, 2, 0, 5]
    assert stats.outcomes(a, b) == [1.0, 0.0, 0.5, 1.0, 0.5]
    est = stats.win_rate_ci(a, b, n_boot=200)
    assert est.value == pytest.approx(3.0 / 5) == pytest.approx(win_rate(a, b))
    assert est.n == 5 and 0.0 <= est.lo <= est.value <= est.hi <= 1.0


def test_bernoulli_interval_matches_the_normal_approximation():
    # 280 wins out of 400: Wald interval 0.7 +- 1.96 * sqrt(0.7 * 0.3 / 400) = [0.6551, 0.7449]
    values = [1.0] * 280 + [0.0] * 120
    est = stats.mean_ci(values, n_boot=4000, seed=1)
    half = 1.96 * math.sqrt(0.7 * 0.3 / 400)
    assert est.value == pytest.approx(0.7)
    assert est.lo == pytest.approx(0.7 - half, abs=0.006)
    assert est.hi == pytest.approx(0.7 + half, abs=0.006)


def test_continuous_interval_width_matches_standard_error():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=500)
    est = stats.mean_ci(x, n_boot=4000, seed=2)
    se = x.std(ddof=0) / math.sqrt(len(x))  # the bootstrap's own standard error of the mean
    assert est.value == pytest.approx(x.mean())
    assert (est.hi - est.lo) == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert est.lo < x.mean() < est.hi


def test_two_point_sample_quantiles_by_hand():
    # resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles of that distribution are 0 and 1
    est = stats.mean_ci([0.0, 1.0], n_boot=4000, seed=0)
    assert (est.value, est.lo, est.hi) == (0.5, 0.0, 1.0)


def test_constant_values_give_a_degenerate_interval():
    est = stats.mean_ci([0.25] * 30, n_boot=100)
    assert (est.lo, est.value, est.hi) == pytest.approx((0.25, 0.25, 0.25))


def test_seeded_and_deterministic():
    x = np.random.default_rng(3).random(50)
    assert stats.mean_ci(x, seed=7) == stats.mean_ci(x, seed=7)
    assert stats.mean_ci(x, seed=7) != stats.mean_ci(x, seed=8)


def test_paired_difference_keeps_pairs_together():
    # b = a + 1 exactly: every resample of pairs has mean difference -1, so the interval is a point,
    # while resampling a and b independently would give a wide interval
    a = np.random.default_rng(4).normal(size=100)
    est = stats.paired_diff_ci(a, a + 1.0, n_boot=500)
    assert (est.value, est.lo, est.hi) == pytest.approx((-1.0, -1.0, -1.0))


def test_edge_sizes():
    empty = stats.mean_ci([])
    assert empty.n == 0 and math.isnan(empty.value)
    one = stats.mean_ci([2.5])
    assert (one.value, one.lo, one.hi, one.n) == (2.5, 2.5, 2.5, 1)


def test_custom_statistic_over_paired_columns():
    # statistic = difference of column means on [n_boot, N, 2] resamples
    data = np.column_stack([np.arange(10.0), np.zeros(10)])
    est = stats.bootstrap(data, lambda s: s[..., 0].mean(-1) - s[..., 1].mean(-1), n_boot=300)
    assert est.value == pytest.approx(4.5)
    assert est.lo < 4.5 < est.hi


def test_format():
    e = stats.Estimate(0.7123, 0.65, 0.771, 200)
    assert e.fmt() == "0.712 [0.650, 0.771]"
    assert e.fmt(percent=True) == "71.2% [65.0, 77.1]"
    assert e.to_dict() == {"value": 0.7123, "lo": 0.65, "hi": 0.771, "n": 200}
