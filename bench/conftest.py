"""Benchmark harness: sizes per device, per-op timing that excludes sync overhead, a summary
table (time, effective bytes/s, speedup over the reference, fraction of copy bandwidth) printed
at the end and saved as JSON under bench/results/.

Environment: CSDFD_BENCH_SIZES="1e6,5e6" overrides the sizes; CSDFD_BENCH_TAG names the result
file (default: device name + date); CSDFD_BENCH_SYSTEM_MALLOC=1 runs CPU benchmarks with glibc's
allocator defaults rather than the trainer's (csdfd.cpumem).
"""

import datetime
import json
import os
import re
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# CPU runs measure the trainer's host allocator (csdfd.cpumem; Config.keep_cpu_memory, on by
# default): freed memory stays in the process. It is process-wide, so it is set here, for every
# benchmark alike; CSDFD_BENCH_SYSTEM_MALLOC=1 keeps glibc's defaults instead.
MALLOC = ""
if DEVICE == "cpu":
    from csdfd.cpumem import keep_freed_memory

    MALLOC = ("glibc defaults" if os.environ.get("CSDFD_BENCH_SYSTEM_MALLOC")
              else keep_freed_memory() or "kept")
DEFAULT_SIZES = {"cuda": [1_000_000, 5_000_000, 20_000_000, 100_000_000],
                 "cpu": [1_000_000, 5_000_000, 20_000_000]}
ROWS: list[dict] = []
RESULTS = Path(__file__).parent / "results"


def sizes() -> list[int]:
    env = os.environ.get("CSDFD_BENCH_SIZES")
    return [int(float(s)) for s in env.split(",")] if env else DEFAULT_SIZES[DEVICE]


def device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu-{os.cpu_count()}cores"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def measure(benchmark, fn, inner: int, rounds: int, **info) -> dict:
    """Time ``fn`` with pytest-benchmark: each round runs it ``inner`` times and synchronises
    once, so launch-queue latency is amortised the way a training loop sees it. Records a row."""
    fn()
    sync()  # warm-up: compilation, caches

    def run():
        for _ in range(inner):
            fn()
        sync()

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    per_op = benchmark.stats.stats.median / inner
    row = dict(info, seconds=per_op, device=device_name())
    if "bytes" in row:
        row["GB/s"] = row["bytes"] / per_op / 1e9
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "device"})
    ROWS.append(row)
    return row


def _table(rows: list[dict]) -> str:
    copy = {(r["P"], r.get("K")): r for r in rows if r["impl"] == "copy"}
    ref = {(r["P"], r.get("K"), r.get("dtype")): r for r in rows if r["impl"] == "reference"}
    lines = ["| op | impl | K | P | dtype | time | GB/s | vs reference | vs copy GB/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["op"], r["P"], r.get("K", 0), r["seconds"])):
        base = ref.get((r["P"], r.get("K"), r.get("dtype")))
        cp = copy.get((r["P"], r.get("K")))
        speed = f"{base['seconds'] / r['seconds']:.1f}x" if base else ""
        frac = f"{r['GB/s'] / cp['GB/s']:.0%}" if cp and "GB/s" in r and r is not cp else ""
        gbs = f"{r['GB/s']:.1f}" if "GB/s" in r else ""
        lines.append(f"| {r['op']} | {r['impl']} | {r.get('K', '')} | {r['P']:,} | "
                     f"{r.get('dtype', '')} | {r['seconds'] * 1e3:.3f} ms | {gbs} | {speed} | "
                     f"{frac} |")
    return "\n".join(lines)


TARGET_P = 20_000_000


def _targets(rows: list[dict]) -> list[str]:
    """Issue 4's targets, judged from this run's rows (GPU only; fp32, K = 2, P >= 20M):
    >= 85% of the copy's GB/s at every such P, >= 10x the reference and >= 50x the naive recipe
    at P = 20M, and UVS + CGR <= 1% of the efficientnet_b4 step."""
    if DEVICE != "cuda":
        return []
    pick = {(r["impl"], r["P"]): r for r in rows
            if r["op"] == "uvs_cgr" and r.get("dtype") == "float32"}
    out = []
    for (impl, p), r in sorted(pick.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if impl not in ("triton", "cuda") or p < TARGET_P:
            continue
        checks = []
        for name, base, goal, ratio in (
                ("copy", "copy", 0.85, lambda b: r["GB/s"] / b["GB/s"]),
                ("reference", "reference", 10, lambda b: b["seconds"] / r["seconds"]),
                ("naive", "naive (cat + host scipy)", 50, lambda b: b["seconds"] / r["seconds"])):
            b = pick.get((base, p))
            if name != "copy" and p != TARGET_P:
                continue  # the speedup targets are stated at P = 20M
            if b is None:
                checks.append(f"vs {name}: not measured")
                continue
            v = ratio(b)
            shown = f"{v:.0%}" if name == "copy" else f"{v:.1f}x"
            want = f"{goal:.0%}" if name == "copy" else f"{goal}x"
            verdict = "met" if v >= goal else "NOT met"
            checks.append(f"vs {name} {shown} (target >= {want}: {verdict})")
        out.append(f"target {impl} P={p:,} fp32: " + "; ".join(checks))
    for r in rows:
        if r["op"] == "csdfd_step":
            ok = "met" if r["share"] <= 0.01 else "NOT met"
            out.append(f"target {r['impl']} step share {r['share']:.2%} (target <= 1%: {ok})")
    return out


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    table = _table(ROWS)
    terminalreporter.write_line("")
    terminalreporter.write_line(f"csdfd benchmarks on {device_name()} (torch {torch.__version__})")
    if DEVICE == "cpu" and any(r["impl"] == "triton" for r in ROWS):
        terminalreporter.write_line("triton rows ran in the CPU interpreter: not performance")
    terminalreporter.write_line(table)
    verdicts = _targets(ROWS)
    for line in verdicts:
        terminalreporter.write_line(line)
    tag = os.environ.get("CSDFD_BENCH_TAG") or re.sub(
        r"[^A-Za-z0-9_.-]+", "-", f"{device_name()}-{datetime.date.today().isoformat()}")
    RESULTS.mkdir(exist_ok=True)
    meta = dict(device=device_name(), torch=torch.__version__, date=str(datetime.date.today()),
                **({"malloc": MALLOC} if MALLOC else {}))
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    (RESULTS / f"{tag}.json").write_text(json.dumps(dict(meta=meta, rows=ROWS), indent=1))
    notes = "".join(f"\n- {line}" for line in verdicts)
    (RESULTS / f"{tag}.md").write_text(f"# {meta}\n\n{table}\n{notes}\n")
    terminalreporter.write_line(f"saved bench/results/{tag}.json and .md")
