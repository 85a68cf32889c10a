"""Training curves (the paper's Figs. 2 and 5): per-stream losses L1, L2 and the cosine of the
two streams' gradients over the steps, from the rows of ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Losses (top) and gradient cosines (bottom) of one or more runs, keyed by label."""
    fig, (ax_loss, ax_cos) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, rows in runs.items():
        train = [r for r in rows if r.get("kind") == "train"]
        prefix = f"{label}: " if len(runs) > 1 else ""
        for ax, key, style, name in ((ax_loss, "L1", "-", "L1"), (ax_loss, "L2", "--", "L2"),
                                     (ax_cos, "cos", "-", "cos(g1, g2) over theta"),
                                     (ax_cos, "cos_p", ":", "over phi")):
            pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
            if pts:
                steps, values = zip(*pts, strict=True)
                ax.plot(steps, values, style, label=f"{prefix}{name}")
    ax_loss.set_ylabel("BCE loss")
    ax_loss.set_title(title or "per-stream losses: L1 = [xr, xf], L2 = [xr, xs]")
    ax_cos.axhline(0.0, color="grey", lw=0.8)
    ax_cos.set_ylabel("gradient cosine")
    ax_cos.set_xlabel("step")
    for ax in (ax_loss, ax_cos):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    if not ax_cos.get_legend_handles_labels()[0]:
        ax_cos.text(0.5, 0.5, "single-stream mode: no gradient pair", ha="center",
                    transform=ax_cos.transAxes)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
