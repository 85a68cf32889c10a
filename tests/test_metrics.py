"""csdfd.metrics against scikit-learn, including ties, imbalance and degenerate sets."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics

from csdfd import metrics

interpolate = pytest.importorskip("scipy.interpolate")
optimize = pytest.importorskip("scipy.optimize")


def _case(n: int, fake_frac: float, ties: bool, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fake_frac).astype(int)
    y[0], y[-1] = 0, 1  # both classes present
    s = rng.random(n) * 0.6 + 0.4 * y * rng.random(n)
    if ties:
        s = np.round(s, 1)  # many tied scores, across classes
    return y, s


def _sk_eer(y, s) -> float:
    """The usual EER recipe: where the interpolated ROC curve meets FPR = 1 - TPR."""
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    curve = interpolate.interp1d(fpr, tpr)
    return optimize.brentq(lambda x: 1.0 - x - curve(x), 0.0, 1.0)


CASES = [(n, frac, ties, seed) for n, frac in ((2, 0.5), (7, 0.5), (123, 0.3), (1000, 0.8))
         for ties in (False, True) for seed in (0, 1)]


@pytest.mark.parametrize(("n", "frac", "ties", "seed"), CASES)
def test_against_sklearn(n, frac, ties, seed):
    y, s = _case(n, frac, ties, seed)
    assert metrics.roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(
        sklearn_metrics.average_precision_score(y, s), abs=1e-12)
    assert metrics.accuracy(y, s) == sklearn_metrics.accuracy_score(y, s >= 0.5)
    assert metrics.eer(y, s) == pytest.approx(_sk_eer(y, s), abs=1e-9)
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    ours = metrics.roc_curve(y, s)
    np.testing.assert_allclose(ours[0], fpr, atol=1e-12)
    np.testing.assert_allclose(ours[1], tpr, atol=1e-12)


def test_known_values():
    y = [0, 0, 1, 1]
    assert metrics.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert metrics.eer(y, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.eer(y, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.accuracy(y, [0.5, 0.4, 0.5, 0.6]) == 0.75  # 0.5 counts as fake


def test_one_class_gives_nan():
    out = metrics.frame_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(out["auc"]) and math.isnan(out["ap"]) and math.isnan(out["eer"])
    assert out["acc"] == 1.0 and out["n_real"] == 3 and out["n_fake"] == 0


@pytest.mark.parametrize(("labels", "ap"),
                         [([0, 0, 0], math.nan), ([1, 1, 1], 1.0), ([], math.nan)])
def test_one_class_is_defined_and_quiet(labels, ap):
    """scikit-learn raises (AUC) or warns (ROC, AP) on one class; ours is a defined value."""
    scores = [0.3, 0.1, 0.3][: len(labels)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = metrics.frame_metrics(labels, scores)
        fpr, tpr = metrics.roc_curve(labels, scores) if labels else (None, None)
    assert math.isnan(out["auc"]) and math.isnan(out["eer"])
    assert out["ap"] == ap or (math.isnan(ap) and math.isnan(out["ap"]))
    if labels:  # the absent class's rate is 0 throughout, the present one's ends at 1
        assert np.isfinite(fpr).all() and np.isfinite(tpr).all()
        assert (fpr[-1], tpr[-1]) == ((1.0, 0.0) if labels[0] == 0 else (0.0, 1.0))


def test_metrics_are_scikit_learns(monkeypatch):
    """AUC, AP and the ROC curve (hence EER) are computed by scikit-learn at run time."""
    calls = []
    for name in ("roc_auc_score", "average_precision_score", "_roc_curve"):
        real = getattr(metrics, name)
        monkeypatch.setattr(metrics, name, lambda *a, _f=real, _n=name, **k: (
            calls.append(_n), _f(*a, **k))[1])
    y, s = _case(50, 0.5, True, 3)
    metrics.frame_metrics(y, s)
    assert sorted(set(calls)) == ["_roc_curve", "average_precision_score", "roc_auc_score"]


def test_scikit_learn_is_a_runtime_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("scikit-learn") for d in project["dependencies"])
    assert not any(d.startswith("scikit-learn") for d in project["optional-dependencies"]["test"])


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [([0, 1], [0.1], "differ in length"), ([0, 2], [0.1, 0.2], "0 \\(real\\) or 1"),
     ([0, 1], [0.1, float("nan")], "non-finite")],
)
def test_bad_input(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        metrics.frame_metrics(labels, scores)


def test_mean_over_targets():
    res = {"a": {"auc": 0.5, "ap": 0.4, "eer": 0.3, "acc": 0.2},
           "b": {"auc": 1.0, "ap": 0.8, "eer": 0.1, "acc": 0.6}}
    assert metrics.mean_over(res, ["a", "b"]) == pytest.approx(
        {"auc": 0.75, "ap": 0.6, "eer": 0.2, "acc": 0.4})
    assert math.isnan(metrics.mean_over(res, [])["auc"])
