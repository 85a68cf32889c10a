"""Training curves (the paper's Figs. 2 and 5): per-stream losses L1, L2 and the cosine of the
two streams' gradients over the steps, and the AUC of every evaluated set after each epoch, from
the rows of ``metrics.jsonl`` (csdfd.runlog)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Series with at most this many points get a marker on every point: a line through one point
#: is invisible, and a few markers show where the evaluations / log rows are.
FEW_POINTS = 30


def _plot(ax, pts: list[tuple[float, float]], style: str, label: str) -> None:
    if pts:
        steps, values = zip(*pts, strict=True)
        marker = "o" if len(pts) <= FEW_POINTS else None
        ax.plot(steps, values, style, marker=marker, markersize=3, label=label)


def _auc_series(rows: list[dict], several_runs: bool) -> list[tuple[str, str, list]]:
    """(name, style, [(step, AUC)]) of the eval rows: validation and every test set for one run;
    validation and the cross-domain mean per run when several runs share the panel."""
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not evals:
        return []
    series = [("val", "-", [(r["step"], r["val"]["auc"]) for r in evals])]
    if several_runs:
        series.append(("cross-domain mean", "--", [
            (r["step"], r.get("cross_domain_mean", {}).get("auc")) for r in evals]))
    else:
        for name in evals[-1]["test"]:
            series.append((name, "--", [(r["step"], r["test"][name]["auc"]) for r in evals
                                        if name in r["test"]]))
    return [(n, s, [(x, y) for x, y in pts if y is not None and y == y]) for n, s, pts in series]


def curves_figure(runs: dict[str, list[dict]], title: str = "") -> Figure:
    """Losses (top), gradient cosines (middle) and AUC per epoch (bottom) of one or more runs,
    keyed by label; the x axis is the global step (an epoch's evaluation sits at its last)."""
    fig, (ax_loss, ax_cos, ax_auc) = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True)
    for label, rows in runs.items():
        train = [r for r in rows if r.get("kind") == "train"]
        prefix = f"{label}: " if len(runs) > 1 else ""
        for ax, key, style, name in ((ax_loss, "L1", "-", "L1"), (ax_loss, "L2", "--", "L2"),
                                     (ax_cos, "cos", "-", "cos(g1, g2) over theta"),
                                     (ax_cos, "cos_p", ":", "over phi")):
            _plot(ax, [(r["step"], r[key]) for r in train if r.get(key) is not None], style,
                  f"{prefix}{name}")
        for name, style, pts in _auc_series(rows, len(runs) > 1):
            _plot(ax_auc, pts, style, f"{prefix}{name}")
    ax_loss.set_ylabel("BCE loss")
    ax_loss.set_title(title or "per-stream losses: L1 = [xr, xf], L2 = [xr, xs]")
    ax_cos.axhline(0.0, color="grey", lw=0.8)
    ax_cos.set_ylabel("gradient cosine")
    ax_auc.set_ylabel("frame AUC")
    ax_auc.set_title("after each epoch: validation (checkpoint selection) and test sets",
                     fontsize=9)
    ax_auc.set_xlabel("step")
    for ax in (ax_loss, ax_cos, ax_auc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    for ax, empty in ((ax_cos, "single-stream mode: no gradient pair"),
                      (ax_auc, "no evaluation yet")):
        if not ax.get_legend_handles_labels()[0]:
            ax.text(0.5, 0.5, empty, ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """:func:`curves_figure` written to ``path`` (PNG)."""
    fig = curves_figure(runs, title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
