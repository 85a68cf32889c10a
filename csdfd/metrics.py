"""Frame-level detection metrics in numpy (paper section V: AUC per test set, mean over the
cross-domain sets), plus AP, EER and accuracy at 0.5, with scikit-learn's definitions.

Labels are 0 (real) / 1 (fake); scores are P(fake). Every function is tie-aware and checked
against scikit-learn in tests/test_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("auc", "ap", "eer", "acc")


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite value(s)")
    return y.astype(bool), s


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve = P(score_fake > score_real) + P(tie) / 2 (Mann-Whitney U with
    average ranks); NaN if one class is absent."""
    y, s = _check(labels, scores)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each tie group
    rank_sum = avg_rank[inverse][y].sum()
    return float((rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps


def average_precision(labels, scores) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds (scikit-learn's definition, no
    interpolation); NaN without fakes."""
    y, s = _check(labels, scores)
    if not y.any():
        return math.nan
    tps, fps = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, starting from (0, 0)."""
    y, s = _check(labels, scores)
    tps, fps = _curve(y, s)
    return np.r_[0.0, fps] / max(fps[-1], 1.0), np.r_[0.0, tps] / max(tps[-1], 1.0)


def eer(labels, scores) -> float:
    """Equal error rate: where the ROC curve (linearly interpolated) crosses FPR = 1 - TPR;
    NaN if one class is absent."""
    y, _ = _check(labels, scores)
    if y.all() or not y.any():
        return math.nan
    fpr, tpr = roc_curve(labels, scores)
    d = fpr + tpr - 1.0  # FPR - FNR: rises from -1 at (0, 0) to +1 at (1, 1)
    i = int(np.flatnonzero(d >= 0)[0])
    if d[i] == 0:
        return float(fpr[i])
    t = -d[i - 1] / (d[i] - d[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Fraction correct when ``score >= threshold`` is called fake."""
    y, s = _check(labels, scores)
    return float(np.mean((s >= threshold) == y)) if y.size else math.nan


def frame_metrics(labels, scores) -> dict[str, float]:
    """AUC, AP, EER and accuracy at 0.5 of one test set, plus its class counts."""
    y, _ = _check(labels, scores)
    return {
        "auc": roc_auc(labels, scores),
        "ap": average_precision(labels, scores),
        "eer": eer(labels, scores),
        "acc": accuracy(labels, scores),
        "n_real": int((~y).sum()),
        "n_fake": int(y.sum()),
    }


def mean_over(results: dict[str, dict[str, float]], names: list[str]) -> dict[str, float]:
    """Mean of each metric over the sets ``names`` (the paper's cross-domain mean)."""
    if not names:
        return {m: math.nan for m in METRICS}
    return {m: float(np.mean([results[n][m] for n in names])) for m in METRICS}
