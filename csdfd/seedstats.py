"""Statistics over training seeds for ``python -m csdfd.study --seeds ...``: mean and standard
deviation per result column, and paired differences between strategies with a bootstrap
interval over seeds.

- Spread: the sample standard deviation (``ddof=1``, the unbiased variance's root) over seeds;
  undefined (None) for a single seed.
- Paired difference of strategies A and B on one column: d_s = A_s - B_s for every seed s (both
  trained on the same seed, hence on the same rendered benchmark and the same data order), and
  its mean over seeds.
- Its interval: the percentile bootstrap of that mean. Resample the n seeds with replacement
  ``RESAMPLES`` = 10,000 times from ``numpy.random.default_rng(BOOTSTRAP_SEED = 0)`` (the same
  resamples for every comparison, so a study's intervals are reproducible), take the mean of
  each resample, and report the 2.5% and 97.5% percentiles (numpy's linear interpolation).
  None for a single seed. With 5 seeds there are only 126 distinct resamples and the percentile
  bootstrap is known to be too narrow for so few points: read the interval as a description of
  the seeds' spread, not as a calibrated 95% confidence interval.

numpy only (scipy is a test extra, not a runtime dependency); scipy.stats.bootstrap's default
BCa interval is also unstable for n = 5 and undefined for identical differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation) of ``values``; std is None for a single value."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def bootstrap_interval(
    values: Sequence[float],
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (module docstring); None if
    there are fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean, std and bootstrap interval of the per-seed differences a_s - b_s."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired values need the same non-zero length, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(d)
    return {"mean": mean, "std": std, "ci95": bootstrap_interval(d), "per_seed": d}


def fmt_mean_std(mean: float | None, std: float | None, scale: float = 100.0) -> str:
    """'97.31 ± 0.42' (values scaled, e.g. AUC to %); '-' for a missing or NaN mean."""
    if mean is None or math.isnan(mean):
        return "-"
    return f"{scale * mean:.2f}" + ("" if std is None else f" ± {scale * std:.2f}")


def fmt_difference(diff: dict, scale: float = 100.0) -> str:
    """'+1.23 [-0.40, +2.95]' in points (e.g. AUC percentage points)."""
    if diff["mean"] is None or math.isnan(diff["mean"]):
        return "-"
    text = f"{scale * diff['mean']:+.2f}"
    if diff["ci95"] is not None:
        lo, hi = diff["ci95"]
        text += f" [{scale * lo:+.2f}, {scale * hi:+.2f}]"
    return text
