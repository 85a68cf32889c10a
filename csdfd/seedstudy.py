"""Study entries (``MODE[:field=value,...]``) and the multi-seed study behind
``python -m csdfd.study --seeds 0 1 2 3 4``.

An entry is a training strategy with optional Config overrides of its own, e.g. ``csdfd`` and
``csdfd:cgr_grad=exact`` (the method with the exact conflict-descent gradient). Values are read
as YAML scalars and the whole config is validated, so an entry fails before anything trains.
Entries may not change the data (the benchmark is rendered once per seed and shared).

Every entry trains on every seed, seeds outermost: OUT/seed<k>/<entry folder>/ is a full run
directory. The benchmark of seed k is ``load_benchmark(cfg)`` with ``cfg.seed = k`` (the
synthetic one is rendered per seed; real data is the same files with the seed's order and
self-blends). OUT/study.md and OUT/study.json keep every per-seed row, the mean ± std over seeds
per column, and paired differences by seed (csdfd - OS, OS - S, csdfd - S, and each variant
against its base mode and those baselines) with a bootstrap interval (csdfd.seedstats).
OUT/study_curves.png shows the mean curves over seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import MODES, Config, field_names, resolve
from .data import load_benchmark
from .metrics import METRICS
from .plots import plot_curves
from .report import IN_DOMAIN, markdown
from .runlog import RunLog
from .seedstats import (
    BOOTSTRAP_SEED,
    LEVEL,
    RESAMPLES,
    fmt_difference,
    fmt_mean_std,
    mean_std,
    paired_difference,
)

#: Fields load_benchmark reads (csdfd.data): an entry may not change them.
BENCH_FIELDS = ("data", "test", "quality", "img_size", "seed", "synth_train_ids",
                "synth_val_ids", "synth_test_ids", "synth_frames", "synth_eval_frames")
#: Paired differences of the paper's Table II question: does CS-DFD beat plain O+S and S?
PAIRS = (("csdfd", "OS"), ("OS", "S"), ("csdfd", "S"))
CROSS = "cross-domain mean"
_CURVE_KEYS = ("L1", "L2", "cos", "cos_p")


@dataclass(frozen=True)
class Entry:
    """One row of a study: a mode and its own Config overrides."""

    label: str  # as written: "csdfd" or "csdfd:cgr_grad=exact"
    mode: str
    fields: dict = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """Run folder name: the label with ':' and ',' as '+' (no ':' in Windows paths)."""
        return self.label.replace(":", "+").replace(",", "+")


def parse_entry(spec: str) -> Entry:
    """``MODE`` or ``MODE:field=value[,field=value...]``; errors name the spec and the fix."""
    mode, sep, rest = spec.partition(":")
    if mode not in MODES:
        raise ValueError(f"study entry {spec!r}: mode must be one of {MODES}, got {mode!r}")
    fields: dict = {}
    for item in rest.split(",") if sep else ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"study entry {spec!r}: write MODE:field=value[,field=value], "
                             f"e.g. csdfd:cgr_grad=exact (got {item!r})")
        if key not in field_names():
            raise ValueError(f"study entry {spec!r}: unknown config field {key!r}; see --help")
        if key == "mode" or key in BENCH_FIELDS:
            raise ValueError(f"study entry {spec!r}: {key} is shared by the whole study; set it "
                             f"with --{key.replace('_', '-')} (or --seeds) for all entries")
        fields[key] = yaml.safe_load(value)
    return Entry(spec, mode, fields)


def entry_config(overrides: dict, entry: Entry, seed: int | None = None) -> Config:
    """The validated config of ``entry``: the study's overrides, then the entry's own fields."""
    values = {**overrides, **entry.fields, "mode": entry.mode}
    if seed is not None:
        values["seed"] = seed
    try:
        return resolve(values)
    except ValueError as exc:
        raise ValueError(f"study entry {entry.label!r}: {exc}") from exc


def parse_entries(specs: list[str], overrides: dict, seeds: list[int] | None) -> list[Entry]:
    """Parse and validate every entry (for every seed) before anything trains."""
    entries = [parse_entry(s) for s in specs]
    folders = [e.folder for e in entries]
    if len(set(folders)) != len(folders):
        raise ValueError(f"study entries repeat: {specs}")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeat: {seeds}")
    if seeds is not None and "seed" in overrides:
        raise ValueError("--seed and --seeds both given: use --seeds only")
    for e in entries:
        for s in seeds or [None]:
            entry_config(overrides, e, s)
    return entries


def run_seeds(overrides: dict, entries: list[Entry], seeds: list[int], out: Path,
              quiet: bool = False) -> tuple[dict, bool]:
    """Train every entry on every seed; returns ({label: {seed: result}}, finished)."""
    from .trainer import Trainer

    results: dict = {e.label: {} for e in entries}
    bench_names = {}
    for seed in seeds:
        configs = [entry_config(overrides, e, seed) for e in entries]
        bench = load_benchmark(configs[0])
        bench_names[seed] = bench.name
        for entry, cfg in zip(entries, configs, strict=True):
            print(f"\n=== seed {seed}: {entry.label} ===", flush=True)
            res = Trainer(cfg, out / f"seed{seed}" / entry.folder, bench, quiet=quiet).fit()
            if res["status"] != "finished":  # Ctrl-C: that run saved last.pt
                print(f"study stopped at seed {seed}, {entry.label}", flush=True)
                done = [s for s in seeds if all(s in results[e.label] for e in entries)]
                if done:
                    write_study(results, entries, done, bench_names, out)
                return results, False
            results[entry.label][seed] = res
    write_study(results, entries, seeds, bench_names, out)
    return results, True


def _columns(result: dict) -> list[str]:
    sets = list(result["test"])
    return sets + ([CROSS] if any(s != IN_DOMAIN for s in sets) else [])


def _value(result: dict, column: str, metric: str) -> float:
    return (result["cross_domain_mean"] if column == CROSS else result["test"][column])[metric]


def _pairs(entries: list[Entry]) -> list[tuple[str, str]]:
    """PAIRS among plain modes, then each variant minus its base mode and minus the baselines
    its base mode is compared with."""
    plain = {e.mode for e in entries if not e.fields}
    out = [(a, b) for a, b in PAIRS if a in plain and b in plain]
    for v in (e for e in entries if e.fields):
        out += [(v.label, v.mode)] if v.mode in plain else []
        out += [(v.label, b) for a, b in PAIRS if a == v.mode and b in plain]
    return out


def summarise(results: dict, entries: list[Entry], seeds: list[int]) -> dict:
    """Mean ± std per entry and column, and the paired differences, for every metric."""
    cols = _columns(results[entries[0].label][seeds[0]])
    summary: dict = {}
    for e in entries:
        summary[e.label] = {m: {} for m in METRICS}
        for m in METRICS:
            for c in cols:
                mean, std = mean_std([_value(results[e.label][s], c, m) for s in seeds])
                summary[e.label][m][c] = {"mean": mean, "std": std}
    diffs = []
    for a, b in _pairs(entries):
        for m in METRICS:
            for c in cols:
                d = paired_difference([_value(results[a][s], c, m) for s in seeds],
                                      [_value(results[b][s], c, m) for s in seeds])
                diffs.append({"a": a, "b": b, "metric": m, "column": c, **d})
    return {"columns": cols, "summary": summary, "differences": diffs}


def tables(stats: dict, entries: list[Entry], metric: str = "auc") -> tuple[str, str]:
    """Markdown: mean ± std per entry, and the paired differences (points, 95% interval)."""
    cols = stats["columns"]

    def head(first: str) -> list[str]:
        return ["| " + " | ".join([first, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]

    rows = head("model")
    for e in entries:
        cells = [fmt_mean_std(**stats["summary"][e.label][metric][c]) for c in cols]
        rows.append("| " + " | ".join([e.label, *cells]) + " |")
    diffs = head("difference")
    for a, b in dict.fromkeys((d["a"], d["b"]) for d in stats["differences"]):
        cells = {d["column"]: fmt_difference(d) for d in stats["differences"]
                 if (d["a"], d["b"], d["metric"]) == (a, b, metric)}
        diffs.append("| " + " | ".join([f"{a} − {b}", *[cells[c] for c in cols]]) + " |")
    return "\n".join(rows), "\n".join(diffs)


def _mean(values: list) -> float | None:
    ok = all(isinstance(v, (int, float)) and v == v for v in values)
    return sum(values) / len(values) if values and ok else None


def mean_curves(runs: list[list[dict]]) -> list[dict]:
    """Rows of ``metrics.jsonl`` averaged over runs, step by step: train rows (losses, gradient
    cosines) and eval rows (AUC of validation, each test set and the cross-domain mean); only
    steps every run logged, and values every run has."""
    groups: dict = {}
    for rows in runs:
        for r in rows:
            if r.get("kind") in ("train", "eval"):
                groups.setdefault((r["step"], r["kind"]), []).append(r)
    out = []
    for (step, kind), rows in sorted(groups.items()):
        if len(rows) != len(runs):
            continue
        row: dict = {"kind": kind, "step": step}
        if kind == "train":
            row.update({k: v for k in _CURVE_KEYS
                        if (v := _mean([r.get(k) for r in rows])) is not None})
        else:
            auc = lambda get: {"auc": _mean([get(r).get("auc") for r in rows])}  # noqa: E731
            row["val"] = auc(lambda r: r["val"])
            row["cross_domain_mean"] = auc(lambda r: r.get("cross_domain_mean", {}))
            row["test"] = {n: auc(lambda r, n=n: r["test"].get(n, {})) for n in rows[0]["test"]}
        out.append(row)
    return out


def write_study(results: dict, entries: list[Entry], seeds: list[int], bench_names: dict,
                out: Path) -> dict:
    """OUT/study.md, OUT/study.json, OUT/study_curves.png over ``seeds``; prints the tables."""
    stats = summarise(results, entries, seeds)
    mean_t, diff_t = tables(stats, entries)
    seeds_text = ", ".join(map(str, seeds))
    what = "test AUC (%), checkpoints selected on validation: mean ± std over the seeds"
    diff_what = ("paired differences by seed, AUC points: mean [95% percentile bootstrap "
                 "interval of the mean, 10,000 resamples of the seeds]")
    per_seed = [(f"{results[e.label][s]['config']['backbone']} ({e.label}), seed {s}",
                 results[e.label][s]) for s in seeds for e in entries]
    title = f"Strategies over seeds {seeds_text}"
    text = (f"# {title}\n\nBenchmarks: {', '.join(bench_names[s] for s in seeds)}\n\n"
            f"## {what}\n\n{mean_t}\n\n## {diff_what}\n\n{diff_t}\n\n"
            + markdown(per_seed, "Per-seed rows"))
    (out / "study.md").write_text(text)
    keep = ("test", "cross_domain_mean", "selected", "train_time_s", "nonfinite_skipped", "out")
    (out / "study.json").write_text(json.dumps({
        "seeds": seeds, "entries": [e.label for e in entries],
        "benchmarks": {str(s): bench_names[s] for s in seeds},
        "runs": {e.label: {str(s): {k: results[e.label][s][k] for k in keep} for s in seeds}
                 for e in entries},
        **stats,
        "bootstrap": {"method": "percentile", "resamples": RESAMPLES, "level": LEVEL,
                      "rng": f"numpy.random.default_rng({BOOTSTRAP_SEED})",
                      "std": "sample (ddof=1)"},
    }, indent=2))
    plot_curves({e.label: mean_curves([RunLog.read(out / f"seed{s}" / e.folder) for s in seeds])
                 for e in entries}, out / "study_curves.png",
                f"mean over seeds {seeds_text}: per-stream losses and gradient cosine")
    print(f"\n{title}: {what}\n{mean_t}\n\n{diff_what}\n{diff_t}\n(per-seed rows and AP, EER, "
          f"accuracy: {out / 'study.md'})", flush=True)
    return stats
