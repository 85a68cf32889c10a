"""Statistics over seeds: mean ± sample std, paired differences, the percentile bootstrap,
against hand-computed values."""

from __future__ import annotations

import math

import pytest

from csdfd.seedstats import (
    bootstrap_interval,
    fmt_difference,
    fmt_mean_std,
    mean_std,
    paired_difference,
)


def test_mean_and_sample_std():
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3), rel=1e-15)  # ddof = 1
    assert mean_std([0.7]) == (0.7, None)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_bootstrap_of_two_seeds():
    # resample means of [0, 1]: 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% percentiles are the extremes
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_quantiles_of_a_binomial():
    # the resample mean of [0, 0, 0, 0, 1] is k / 5 with k ~ Binomial(5, 1/5):
    # P(k = 0) = 0.328 > 2.5%, P(k <= 2) = 0.942 < 97.5% <= P(k <= 3) = 0.993
    lo, hi = bootstrap_interval([0, 0, 0, 0, 1])
    assert (lo, hi) == (0.0, pytest.approx(0.6, abs=1e-12))
    # a 30% interval: the 35% and 65% quantiles, both k = 1 (P(k = 0) < 35%, P(k <= 1) = 0.737)
    lo, hi = bootstrap_interval([0, 0, 0, 0, 1], level=0.3)
    assert (lo, hi) == (pytest.approx(0.2, abs=1e-12), pytest.approx(0.2, abs=1e-12))


def test_bootstrap_edge_cases_and_reproducibility():
    assert bootstrap_interval([0.3] * 5) == (pytest.approx(0.3), pytest.approx(0.3))
    assert bootstrap_interval([0.3]) is None
    values = [0.1, -0.2, 0.4, 0.0, 0.25]
    assert bootstrap_interval(values) == bootstrap_interval(values)  # fixed RNG seed
    lo, hi = bootstrap_interval(values)
    assert min(values) <= lo < sum(values) / 5 < hi <= max(values)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(values, level=95)


def test_paired_difference():
    d = paired_difference([0.90, 0.80], [0.85, 0.80])
    assert d["per_seed"] == pytest.approx([0.05, 0.0])
    assert d["mean"] == pytest.approx(0.025) and d["std"] == pytest.approx(0.05 / math.sqrt(2))
    assert d["ci95"] == (pytest.approx(0.0), pytest.approx(0.05))
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_difference([0.9], [0.8, 0.7])


def test_formatting():
    assert fmt_mean_std(0.97314, 0.0042) == "97.31 ± 0.42"
    assert fmt_mean_std(0.5, None) == "50.00"
    assert fmt_mean_std(float("nan"), None) == "-"
    assert fmt_difference({"mean": 0.0123, "ci95": (-0.004, 0.0295)}) == "+1.23 [-0.40, +2.95]"
    assert fmt_difference({"mean": -0.01, "ci95": None}) == "-1.00"
