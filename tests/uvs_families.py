"""Gradient families for the UVS property tests and bench/uvs_precision.py, and independent
float64 solutions of the primal (eq. 11) and the dual (eq. 15) to check the ops against.

Families (rows are the K stream gradients, float64):

- ``hull_zero``: 0 in the relative interior of the rows' convex hull (sum_j w_j g_j = 0 with
  every w_j > 0: Pareto-stationary, torchjd's "strong" matrices);
- ``weak``: 0 on the boundary of the hull only (torchjd's "strictly weak" matrices);
- ``non_weak``: 0 not in the hull (a common descent direction exists);
- ``normal``: a random matrix of a given rank (torchjd's "normal" matrices);
- ``antiparallel``: g2 = -s g1;
- ``rank_deficient``: K rows in an r-dimensional subspace, r < K.

Samplers follow torchjd's tests/unit/aggregation/_matrix_samplers.py in what they produce (a
left-singular structure that forces the stationarity type); the code is ours.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch


def _orthonormal(n: int, gen: torch.Generator, against: torch.Tensor | None = None):
    """A random [n, n - k] matrix with orthonormal columns, orthogonal to ``against`` [n, k]."""
    k = 0 if against is None else against.shape[1]
    a = torch.randn(n, n - k, dtype=torch.float64, generator=gen)
    if against is not None:
        a = a - against @ (against.T @ a)
    return torch.linalg.qr(a)[0]


def _spectrum(rank: int, gen: torch.Generator) -> torch.Tensor:
    return torch.diag(torch.randn(rank, dtype=torch.float64, generator=gen).abs() + 0.1)


def _with_left(left: torch.Tensor, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """Rows U[:, :rank] S V[:rank] for the left basis ``left`` [K, >= rank]."""
    v = _orthonormal(p, gen)
    return left[:, :rank] @ _spectrum(rank, gen) @ v[:, :rank].T


def normal(k: int, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    return _with_left(_orthonormal(k, gen), p, rank, gen)


def hull_zero(k: int, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """w^T A = 0 for a positive w: rows orthogonal (in R^K) to w, so sum_j w_j g_j = 0."""
    w = torch.rand(k, dtype=torch.float64, generator=gen) + 0.2
    u1 = (w / w.norm())[:, None]
    return _with_left(_orthonormal(k, gen, u1), p, min(rank, k - 1), gen)


def weak(k: int, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """w^T A = 0 for a non-negative w with zeros, and no positive such w: a second non-negative
    left-singular vector w' with a positive singular value, disjoint support from w."""
    u = torch.rand(k, dtype=torch.float64, generator=gen) + 0.2
    perm = torch.randperm(k, generator=gen)
    cut = int(torch.randint(1, k, (1,), generator=gen))
    w, w2 = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    w[perm[:cut]], w2[perm[cut:]] = u[perm[:cut]], u[perm[cut:]]
    u12 = torch.stack([w / w.norm(), w2 / w2.norm()], 1)
    left = torch.cat([u12, _orthonormal(k, gen, u12)], 1)
    return _with_left(left[:, 1:], p, min(rank, k - 1), gen)


def non_weak(k: int, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """A positive left-singular vector with a positive singular value: 0 not in the hull."""
    u = torch.rand(k, dtype=torch.float64, generator=gen) + 0.2
    u1 = (u / u.norm())[:, None]
    return _with_left(torch.cat([u1, _orthonormal(k, gen, u1)], 1), p, rank, gen)


def antiparallel(s: float, p: int, gen: torch.Generator) -> torch.Tensor:
    g1 = torch.randn(p, dtype=torch.float64, generator=gen)
    return torch.stack([g1, -s * g1])


def rank_deficient(k: int, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    basis = torch.randn(rank, p, dtype=torch.float64, generator=gen)
    return torch.randn(k, rank, dtype=torch.float64, generator=gen) @ basis


def family(name: str, k: int, p: int, seed: int) -> torch.Tensor:
    """One member of a named family (see the module docstring); rank min(k, p) - 1 where the
    family needs it lower than K."""
    gen = torch.Generator().manual_seed(seed)
    rank = max(1, min(k - 1, p))
    if name == "hull_zero":
        return hull_zero(k, p, rank, gen)
    if name == "weak":
        return weak(k, p, rank, gen)
    if name == "non_weak":
        return non_weak(k, p, min(k, p), gen)
    if name == "normal":
        return normal(k, p, min(k, p), gen)
    if name == "rank_deficient":
        return rank_deficient(k, p, max(1, min(k - 2, p)), gen)
    if name == "antiparallel":
        return antiparallel([0.3, 0.7, 2.0][seed % 3], p, gen)
    raise ValueError(f"unknown family {name!r}")


FAMILIES = ("hull_zero", "weak", "non_weak", "normal", "rank_deficient", "antiparallel")


def typical(k_stationary: int = 20, k_normal: int = 9) -> list[tuple[str, torch.Tensor]]:
    """Matrices shaped like torchjd's ``typical_matrices`` (tests/unit/aggregation/_inputs.py):
    zero matrices, random matrices of every rank, and K = ``k_stationary`` rows that are
    Pareto-stationary (0 inside the hull), only weakly so (0 on its boundary) or not at all,
    with P = 10 or 100 columns and ranks 1 to K - 1; the random ones have up to ``k_normal``
    rows (torchjd: 9). Rows are float64 [K, P]; K >= 2 (a single row has no conflict to
    resolve)."""
    gen = torch.Generator().manual_seed(0)
    kn = k_normal
    out = [(f"zero{k}x{p}", torch.zeros(k, p, dtype=torch.float64)) for k, p in ((4, 3), (kn, 11))]
    out += [(f"normal{k}x{p}r{r}", normal(k, p, r, gen))
            for k, p, r in ((4, 3, 1), (4, 3, 2), (4, 3, 3), (kn, 11, 5), (kn, 11, kn))]
    k = k_stationary
    dims = ((k, 10, min(10, k - 1)), (k, 10, 5), (k, 10, 1), (k, 100, 1), (k, 100, k - 1))
    for name, sampler in (("strong", hull_zero), ("weak", weak), ("nonweak", non_weak)):
        out += [(f"{name}{kk}x{p}r{r}", sampler(kk, p, r, gen)) for kk, p, r in dims]
    return out


# --- independent solutions --------------------------------------------------------------------


_CACHE: dict = {}


def _cached(fn):
    """Memoise a solve on (array bytes, shape, c): several backends check the same inputs."""
    def wrapper(a: np.ndarray, c: float) -> float:
        a = np.ascontiguousarray(a, dtype=np.float64)
        key = (fn.__name__, a.tobytes(), a.shape, float(c))
        if key not in _CACHE:
            _CACHE[key] = fn(a, c)
        return _CACHE[key]
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_cached
def primal(g: np.ndarray, c: float) -> float:
    """max_v min_j g_j . v s.t. ||v - g0||^2 <= c^2 ||g0||^2 (eqs. 9-10), by SLSQP on the
    epigraph form over (v, t) from several starts; float64, on rows scaled to unit trace (the
    value is scaled back). Returns the best value found (a feasible point's: a lower bound)."""
    scale = float((g * g).sum())
    if scale == 0:
        return 0.0
    g = g / np.sqrt(scale)
    g0 = g.sum(0)
    r2 = c * c * float(g0 @ g0)
    cons = [{"type": "ineq", "fun": lambda x: g @ x[:-1] - x[-1], "jac": lambda x: np.hstack(
        [g, -np.ones((len(g), 1))])},
            {"type": "ineq", "fun": lambda x: r2 - (x[:-1] - g0) @ (x[:-1] - g0),
             "jac": lambda x: np.append(-2 * (x[:-1] - g0), 0.0)}]
    best = -np.inf
    worst_rows = np.argsort(g @ g0)[:4]  # the streams g0 serves worst: directions to try
    starts = [g0, np.zeros_like(g0)] + [
        g0 + np.sqrt(r2) * g[j] / (np.linalg.norm(g[j]) + 1e-300) for j in worst_rows]
    for v0 in starts:
        x0 = np.append(v0, float((g @ v0).min()))
        res = scipy.optimize.minimize(lambda x: -x[-1], x0, jac=lambda x: np.append(
            np.zeros(len(x) - 1), -1.0), method="SLSQP", constraints=cons,
            options={"ftol": 1e-15, "maxiter": 2000})
        v = res.x[:-1]
        over = np.linalg.norm(v - g0) - np.sqrt(r2)
        if over > 0:  # pull a slightly infeasible answer back onto the ball
            v = g0 + (v - g0) * np.sqrt(r2) / np.linalg.norm(v - g0)
        best = max(best, float((g @ v).min()))
    return best * scale


def worst_gain(g: torch.Tensor, v: torch.Tensor) -> float:
    """min_j g_j . v in float64."""
    return float((g.double() @ v.double()).min())


def psi(gram: np.ndarray, mu: np.ndarray, c: float) -> float:
    """Dual objective of eq. 15 in numpy float64."""
    g0_norm = np.sqrt(max(gram.sum(), 0.0))
    return float(mu @ gram.sum(0) + c * g0_norm * np.sqrt(max(mu @ gram @ mu, 0.0)))


def mu_star2(gram: np.ndarray, c: float) -> np.ndarray:
    """The K = 2 dual minimiser to float64 precision: psi(t, 1 - t) is convex, so bisect on the
    sign of its derivative (written out independently of the ops), 200 halvings."""
    a, m, d = gram[0, 0], gram[0, 1], gram[1, 1]
    b0, b1 = a + m, m + d
    s0 = np.sqrt(max(a + 2 * m + d, 0.0))

    def slope(t):
        q = t * t * a + 2 * t * (1 - t) * m + (1 - t) ** 2 * d
        dq = 2 * t * a + 2 * (1 - 2 * t) * m - 2 * (1 - t) * d
        return (b0 - b1) + (c * s0 * dq / (2 * np.sqrt(q)) if q > 0 else 0.0)

    if slope(0.0) >= 0:
        t = 0.0
    elif slope(1.0) <= 0:
        t = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        t = (lo + hi) / 2
    return np.array([t, 1 - t])


@_cached
def dual_optimum(gram: np.ndarray, c: float) -> float:
    """min psi over the simplex by SLSQP from several starts (independent of our solvers)."""
    k = gram.shape[0]
    tr = float(np.trace(gram)) or 1.0
    gn = gram / tr
    rng = np.random.default_rng(0)
    best = np.inf
    for x0 in [np.full(k, 1 / k)] + list(np.eye(k)) + list(rng.dirichlet(np.ones(k), 8)):
        res = scipy.optimize.minimize(
            lambda m: psi(gn, m, c), x0, method="SLSQP", bounds=[(0, 1)] * k,
            constraints=[{"type": "eq", "fun": lambda m: m.sum() - 1}],
            options={"ftol": 1e-16, "maxiter": 1000})
        m = np.clip(res.x, 0, None)
        best = min(best, psi(gn, m / m.sum(), c))
    return best * tr
