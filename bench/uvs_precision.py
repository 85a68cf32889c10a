"""How precisely each backend solves UVS: the mu error and dual gap of the solve (eq. 15), and
how far the update's worst stream gain min_j g_j . v falls short of the primal optimum of
eq. 11 on degenerate families. Float32 gradients unless the backend takes float64 too.

    PYTHONPATH=$PWD python bench/uvs_precision.py [--quick]

Prints one table per measure (max over the cases, relative to ||g0||^2 where stated). mu* and the
optima come from independent float64 solves in tests/uvs_families.py (bisection for K = 2,
SLSQP from several starts otherwise). Not a pytest file: the tests assert the targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import uvs_families as fam  # noqa: E402

from csdfd import ops  # noqa: E402
from csdfd.ops import reference  # noqa: E402


def conflicting(k: int, p: int, cos: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(p, dtype=torch.float64, generator=gen)
    rows = [base * cos + torch.randn(p, dtype=torch.float64, generator=gen) * (1 - abs(cos))
            for _ in range(k)]
    rows[1] = -rows[1] if cos < 0 else rows[1]
    return torch.stack(rows) * torch.logspace(0, 1, k, dtype=torch.float64)[:, None]


def mu_error(backends, seeds) -> dict:
    """max |mu - mu*| for K = 2 on the float32 Gram of conflicting float32 rows."""
    out = {}
    for b in backends:
        for solver in ("pgd", "exact"):
            worst = 0.0
            for seed in seeds:
                if b == "triton" and seed:
                    continue  # the interpreter is slow
                for cos in (0.9, 0.0, -0.5, -0.95):
                    for c in (0.5, 1.0, 2.0):
                        g = conflicting(2, 64, cos, seed).float()
                        gram = reference.gram(g)
                        star = fam.mu_star2(gram.double().numpy(), c)
                        mu = ops.solve_mu(gram, c, solver, backend=b).double().numpy()
                        worst = max(worst, float(abs(mu - star).max()))
            out[(b, solver)] = worst
    return out


def dual_gap(backends, seeds, ks) -> dict:
    """max (psi(mu) - psi*) / ||g0||^2 per K: float32 rows that are not degenerate (conflicting,
    non-weak, random), and Pareto-stationary rows (0 in the hull) in float64, because a float32
    Gram of such rows is indefinite to ~u and psi's minimum on it (psi* < 0, where the clamped
    ||gw|| is 0) is an artifact; there psi has its kink at the optimum, evaluated to ~sqrt(eps).
    mu is renormalised onto the simplex (float32 mu sums to 1 only to float32 rounding)."""
    out = {}
    cases = []
    for k in ks:
        for seed in seeds:
            for c in (0.5, 1.0, 2.0):
                for cos in (0.0, -0.5, -0.95):
                    cases.append((k, c, "non-degenerate", conflicting(k, 64, cos, seed).float()))
                for name in ("non_weak", "normal"):
                    cases.append((k, c, "non-degenerate", fam.family(name, k, 12, seed).float()))
                for name in ("hull_zero", "weak"):
                    cases.append((k, c, "stationary (fp64)", fam.family(name, k, 12, seed)))
    for i, (k, c, kind, g) in enumerate(cases):
        gram = reference.gram(g)
        gn = gram.double().numpy()
        mus = {b: ops.solve_mu(gram, c, "pgd", backend=b).double().numpy().clip(0)
               for b in backends  # the interpreter is slow; float32 only
               if b != "triton" or (i % 5 == 0 and g.dtype == torch.float32)}
        mus = {b: m / m.sum() for b, m in mus.items()}
        best = min([fam.dual_optimum(gn, c)] + [fam.psi(gn, m, c) for m in mus.values()])
        scale = float(gn.sum())
        for b, m in mus.items():
            key = (b, k, kind)
            out[key] = max(out.get(key, 0.0), (fam.psi(gn, m, c) - best) / scale)
    return out


def primal_shortfall(backends, seeds, dtypes) -> dict:
    """max (p* - min_j g_j . v) / ||g0||^2 on the degenerate families, and any ball violation."""
    out = {}
    names = ("hull_zero", "weak", "rank_deficient", "antiparallel", "non_weak")
    for name in names:
        for k in ((2,) if name == "antiparallel" else (2, 3, 5, 8)):
            for seed in seeds:
                g64 = fam.family(name, k, 12, seed)
                for c in (0.5, 1.0, 2.0):
                    for dtype in dtypes:
                        g = g64.to(dtype)
                        gd = g.double()
                        g0 = gd.sum(0)
                        r = c * float(g0.norm())
                        vs = {}
                        for b in backends:
                            if b == "triton" and (dtype == torch.float64 or k > 3 or seed):
                                continue  # float32 only, and the interpreter is slow
                            vs[b] = ops.uvs(g.clone(), c, backend=b).v.double()
                        feas = {b: float((v - g0).norm()) <= r * (1 + 1e-6) + 1e-12
                                for b, v in vs.items()}
                        best = max([fam.primal(gd.numpy(), c)] + [
                            fam.worst_gain(gd, v) for b, v in vs.items() if feas[b]])
                        scale = float(g0 @ g0)
                        for b, v in vs.items():
                            key = (b, name, str(dtype).replace("torch.", ""))
                            short = (best - fam.worst_gain(gd, v)) / scale if feas[b] else float(
                                "inf")
                            out[key] = max(out.get(key, 0.0), short)
    return out


def solve_time(backends) -> dict:
    """Microseconds per ops.solve_mu call (host timer, median of 50), K = 2 and K = 5."""
    out = {}
    for b in backends:
        for k in (2, 5):
            gram = reference.gram(conflicting(k, 64, -0.5, 0).float())
            ops.solve_mu(gram, 0.5, backend=b)
            times = []
            for _ in range(50 if b != "triton" else 3):
                t0 = time.perf_counter()
                ops.solve_mu(gram, 0.5, backend=b)
                times.append(time.perf_counter() - t0)
            out[(b, k)] = sorted(times)[len(times) // 2] * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds")
    args = parser.parse_args()
    backends = [b for b in ops.backends("cpu")]
    seeds = range(2) if args.quick else range(5)
    print(f"backends: {backends}")
    print("\n| backend | solver | max abs(mu - mu*), K = 2, fp32 Gram |\n|---|---|---|")
    for (b, s), v in mu_error(backends, seeds).items():
        print(f"| {b} | {s} | {v:.2e} |")
    print("\n| backend | K | rows | max dual gap / norm(g0)^2, pgd, fp32 Gram |\n|---|---|---|---|")
    for (b, k, kind), v in sorted(dual_gap(backends, seeds, (3, 5, 8)).items()):
        print(f"| {b} | {k} | {kind} | {v:.2e} |")
    print("\n| backend | family | dtype | max primal shortfall / norm(g0)^2 |\n|---|---|---|---|")
    for (b, n, d), v in sorted(primal_shortfall(backends, seeds,
                                                (torch.float32, torch.float64)).items()):
        print(f"| {b} | {n} | {d} | {v:.2e} |")
    print("\n| backend | K | solve_mu, us per call (host) |\n|---|---|---|")
    for (b, k), v in solve_time(backends).items():
        print(f"| {b} | {k} | {v:.0f} |")


if __name__ == "__main__":
    main()
