"""Frame-level detection metrics (paper section V: AUC per test set, mean over the cross-domain
sets), plus AP, EER and accuracy at 0.5.

AUC, AP and the ROC curve are scikit-learn's (``roc_auc_score``, ``average_precision_score``,
``roc_curve``), the definitions every detection codebase reports (DeepfakeBench included);
this module only checks the input and gives a defined result where scikit-learn has none: NaN
for AUC and EER of a one-class set, NaN for AP without fakes.

Labels are 0 (real) / 1 (fake); scores are P(fake).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as _roc_curve

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
    return y.astype(np.int64), s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve, P(score_fake > score_real) + P(tie) / 2; NaN if one class is
    absent (scikit-learn raises there)."""
    y, s = _check(labels, scores)
    return float(roc_auc_score(y, s)) if _both_classes(y) else math.nan


def average_precision(labels, scores) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds (no interpolation); NaN without
    fakes, where recall is undefined."""
    y, s = _check(labels, scores)
    return float(average_precision_score(y, s)) if y.any() else math.nan


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, starting from (0, 0). A rate whose class is
    absent is 0 throughout (scikit-learn's NaN, and its warning, replaced)."""
    y, s = _check(labels, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, _ = _roc_curve(y, s, drop_intermediate=False)
    return np.nan_to_num(fpr, nan=0.0), np.nan_to_num(tpr, nan=0.0)


def eer(labels, scores) -> float:
    """Equal error rate: where the ROC curve (linearly interpolated) crosses FPR = 1 - TPR;
    NaN if one class is absent."""
    y, _ = _check(labels, scores)
    if not _both_classes(y):
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
        "n_real": int((y == 0).sum()),
        "n_fake": int(y.sum()),
    }


def mean_over(results: dict[str, dict[str, float]], names: list[str]) -> dict[str, float]:
    """Mean of each metric over the sets ``names`` (the paper's cross-domain mean)."""
    if not names:
        return {m: math.nan for m in METRICS}
    return {m: float(np.mean([results[n][m] for n in names])) for m in METRICS}
