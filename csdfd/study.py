"""``python -m csdfd.study``: several training strategies on the same data and seed, compared in
one table shaped like the paper's Table II (and Table III with ``--modes O uvs cgr csdfd``).

    python -m csdfd.study                          # O, S, OS, csdfd on the synthetic benchmark
    python -m csdfd.study --modes O OS uvs cgr csdfd --epochs 4 --out runs/ablation
    python -m csdfd.study --seeds 0 1 2 3 4 --modes O S OS csdfd csdfd:cgr_grad=exact

Every train flag applies to all runs (``--mode`` is replaced by ``--modes``; ``--resume``
and ``--stop-after`` are single-run flags of ``csdfd.train``, refused here). The benchmark is
built once and shared. Each run lands in OUT/<mode>/ (a full run directory); the comparison in
OUT/study.md, OUT/study.json and OUT/study_curves.png (losses and gradient cosines of all runs).
With ``--seeds``, every mode trains on every seed in OUT/seed<k>/<mode>/ and the comparison
gives mean ± std over seeds and paired differences with bootstrap intervals (csdfd.seedstudy).
A mode may carry its own config fields: ``csdfd:cgr_grad=exact`` (folder ``csdfd+cgr_grad=exact``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .config import MODES
from .data import load_benchmark
from .plots import plot_curves
from .report import markdown, table
from .runlog import RunLog
from .seedstudy import entry_config, parse_entries, parse_entry, run_seeds
from .train import build_parser, overrides_from

DEFAULT_MODES = ("O", "S", "OS", "csdfd")  # Table II: the strategies and the method


def build_study_parser():
    parser = build_parser("python -m csdfd.study", single_run=False)
    parser.description = ("Train several strategies with the same seed and data and print one\n"
                          "comparison table (the paper's Table II / III).")
    parser.epilog = ("examples:\n"
                     "  python -m csdfd.study --fused                       # O, S, OS, csdfd\n"
                     "  python -m csdfd.study --modes O uvs cgr csdfd --out runs/ablation\n"
                     "  python -m csdfd.study --seeds 0 1 2 --modes OS csdfd csdfd:cgr_grad=exact")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), metavar="MODE",
                        help=f"strategies to compare, from {MODES}; MODE:field=value[,...] "
                             "adds config overrides of its own, e.g. csdfd:cgr_grad=exact")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="train every mode on every seed (benchmark rendered per seed) and "
                             "print mean ± std and paired differences with bootstrap intervals "
                             "(csdfd.seedstudy); runs in OUT/seed<k>/<mode>")
    return parser


def run_study(overrides: dict, modes: list[str], out: Path, quiet: bool = False) -> dict:
    """Train each mode in OUT/<mode> and return {mode: result}; writes the comparison files."""
    from .trainer import Trainer

    configs = {m: entry_config(overrides, parse_entry(m)) for m in modes}
    bench = load_benchmark(configs[modes[0]])
    results = {}
    for mode, cfg in configs.items():
        print(f"\n=== {mode} ===", flush=True)
        results[mode] = Trainer(cfg, out / parse_entry(mode).folder, bench, quiet=quiet).fit()
        if results[mode]["status"] != "finished":  # Ctrl-C: the run saved last.pt
            print(f"study stopped during {mode}; finished: {list(results)[:-1]}", flush=True)
            return results
    rows = [(f"{configs[m].backbone} ({m})", r) for m, r in results.items()]
    title = f"Strategies compared on {bench.name}, seed {configs[modes[0]].seed}"
    (out / "study.md").write_text(markdown(rows, title))
    (out / "study.json").write_text(json.dumps(
        {m: {k: r[k] for k in ("test", "cross_domain_mean", "selected", "train_time_s",
                               "nonfinite_skipped")} for m, r in results.items()}, indent=2))
    plot_curves({m: RunLog.read(out / parse_entry(m).folder) for m in modes},
                out / "study_curves.png",
                "per-stream losses and gradient cosine, all strategies")
    print(f"\n{title}: test AUC (%), checkpoints selected on validation\n{table(rows)}\n"
          f"(also AP, EER, accuracy: {out / 'study.md'})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = build_study_parser()
    args = parser.parse_args(argv)
    if args.resume is not None or args.stop_after is not None:
        parser.error("--resume/--stop-after apply to single runs: use python -m csdfd.train "
                     "--out OUT/<mode> --resume")
    try:
        overrides = overrides_from(args)
        overrides.pop("mode", None)
        entries = parse_entries(args.modes, overrides, args.seeds)  # validate before training
    except (ValueError, OSError) as exc:
        parser.exit(2, f"csdfd.study: error: {exc}\n")
    out = Path(args.out or f"runs/study-{time.strftime('%Y%m%d-%H%M%S')}")
    runs = ([Path(f"seed{s}") / e.folder for s in args.seeds for e in entries] if args.seeds
            else [Path(e.folder) for e in entries])
    clashes = [str(r) for r in runs if (out / r / "last.pt").exists()]
    if clashes:
        parser.exit(2, f"csdfd.study: error: {out} already holds runs {clashes}; "
                       "choose another --out\n")
    try:
        if args.seeds:
            return 0 if run_seeds(overrides, entries, args.seeds, out, args.quiet)[1] else 130
        results = run_study(overrides, args.modes, out, args.quiet)
    except (ValueError, OSError) as exc:  # setup of a run (data, batch size): one clear line
        parser.exit(2, f"csdfd.study: error: {exc}\n")
    return 0 if all(r["status"] == "finished" for r in results.values()) else 130


if __name__ == "__main__":
    sys.exit(main())
