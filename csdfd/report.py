"""Result tables in the paper's shapes and the ``results.json`` / ``results.md`` files.

Table I: one row per detector, one AUC column per test set (the in-domain set first), then the
mean over the cross-domain targets. Table II is the same shape with one row per strategy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .metrics import METRICS

IN_DOMAIN = "in-domain"
_NAMES = {"auc": "AUC (%)", "ap": "AP (%)", "eer": "EER (%)", "acc": "accuracy at 0.5 (%)"}


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def table(rows: list[tuple[str, dict]], metric: str = "auc") -> str:
    """Markdown table; each row is (label, result) with result["test"][set][metric] and
    result["cross_domain_mean"][metric]."""
    if not rows:
        return ""
    sets = list(rows[0][1]["test"])
    targets = [s for s in sets if s != IN_DOMAIN]
    head = ["model", *sets] + (["cross-domain mean"] if targets else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, res in rows:
        cells = [_pct(res["test"][s].get(metric)) for s in sets]
        if targets:
            cells.append(_pct(res["cross_domain_mean"].get(metric)))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def markdown(rows: list[tuple[str, dict]], title: str) -> str:
    """All four metric tables under one title."""
    parts = [f"# {title}", ""]
    for m in METRICS:
        parts += [f"## {_NAMES[m]}", "", table(rows, m), ""]
    return "\n".join(parts)


def write_results(out: Path, label: str, result: dict, title: str) -> None:
    """``OUT/results.json`` (everything) and ``OUT/results.md`` (the tables)."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    (out / "results.md").write_text(markdown([(label, result)], title))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
