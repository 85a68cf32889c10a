"""Triton device functions for the UVS dual (paper eqs. 14-16) on a K x K Gram matrix, and a
one-program kernel that exposes them as the ``solve_mu`` op.

The maths and every choice (trace normalisation, FISTA-accelerated projected gradient with
backtracking, K = 2 bisection, degenerate-input flags) are those of
``csdfd.ops.reference.solve_mu`` / ``combine_weights``; this file only restates them in Triton.
Vectors are padded to KP = next_pow2(K) lanes; ``valid`` masks the real ones.
"""

import torch
import triton
import triton.language as tl

TINY = tl.constexpr(1e-30)
NEG = tl.constexpr(-1e30)


@triton.jit
def _matvec(G, m):
    """(G m)_i for a [KP, KP] tile and a [KP] vector."""
    return tl.sum(G * m[None, :], axis=1)


@triton.jit
def _psi(G, b, s0, c, m):
    """Dual objective of eq. 15 at one point m ([KP])."""
    gw2 = tl.sum(_matvec(G, m) * m, axis=0)
    return tl.sum(m * b, axis=0) + c * s0 * tl.sqrt(tl.maximum(gw2, 0.0))


@triton.jit
def _psi_rows(G, b, s0, c, M):
    """Dual objective of eq. 15 at each row of M ([NB, KP])."""
    gm = tl.sum(M[:, None, :] * G[None, :, :], axis=2)
    gw2 = tl.sum(gm * M, axis=1)
    return tl.sum(M * b[None, :], axis=1) + c * s0 * tl.sqrt(tl.maximum(gw2, 0.0))


@triton.jit
def _project_rows(X, valid):
    """Euclidean projection of each row of X ([NB, KP]) onto the simplex over the valid lanes.

    Sort-free form of the sort-based rule:
    theta* = max_i (sum_{j: x_j >= x_i} x_j - 1) / #{j: x_j >= x_i}.
    """
    xv = tl.where(valid[None, :], X, NEG)
    ge = (xv[:, None, :] >= xv[:, :, None]) & valid[None, None, :]  # [NB, i, j]: x_j >= x_i
    s = tl.sum(tl.where(ge, xv[:, None, :], 0.0), axis=2)
    n = tl.sum(ge.to(tl.float32), axis=2)
    theta_i = tl.where(valid[None, :], (s - 1.0) / tl.maximum(n, 1.0), NEG)
    theta = tl.max(theta_i, axis=1)
    return tl.where(valid[None, :], tl.maximum(X - theta[:, None], 0.0), 0.0)


@triton.jit
def _momentum(new, f_new, mu, f_mu, t):
    """FISTA extrapolation with restart (reference ``_pgd``): returns (y, t, mu, f_mu).
    ``new`` / ``mu`` are points on the simplex, as [KP] vectors or as K = 2 scalars t."""
    worse = f_new > f_mu
    t_next = (1.0 + tl.sqrt(1.0 + 4.0 * t * t)) / 2.0
    y = tl.where(worse, mu, new + ((t - 1.0) / t_next) * (new - mu))
    return y, tl.where(worse, 1.0, t_next), tl.where(worse, mu, new), tl.minimum(f_mu, f_new)


@triton.jit
def _pgd(G, valid, k, c, iters, beta0, beta_max, NB: tl.constexpr):
    """FISTA-accelerated projected gradient with backtracking (reference ``_pgd``)."""
    lanes = tl.arange(0, NB)
    b = tl.sum(G, axis=0)
    s0 = tl.sqrt(tl.maximum(tl.sum(b, axis=0), 0.0))
    mu = tl.where(valid, 1.0 / k, 0.0)
    f_mu = _psi(G, b, s0, c, mu)
    y = mu
    t = f_mu * 0.0 + 1.0
    beta = f_mu * 0.0 + beta0
    ladder = tl.exp2(1.0 - lanes.to(tl.float32))
    slack = 16 * 1.1920928955078125e-07 * (tl.sum(b, axis=0) + 1.0)
    for _ in range(iters):
        gy = _matvec(G, y)
        nw = tl.sqrt(tl.maximum(tl.sum(gy * y, axis=0), 0.0))
        grad = b + c * s0 * gy / tl.maximum(nw, TINY)
        f_y = _psi(G, b, s0, c, y)
        betas = beta * ladder
        cand = _project_rows(y[None, :] - betas[:, None] * grad[None, :], valid)
        d = cand - y[None, :]
        f_c = _psi_rows(G, b, s0, c, cand)
        bound = f_y + tl.sum(d * grad[None, :], axis=1) + tl.sum(d * d, axis=1) / (2 * betas)
        ok = f_c <= bound + slack * (1.0 + tl.abs(f_y))
        first = tl.min(tl.where(ok, lanes, NB), axis=0)  # largest accepted step
        moved = first < NB
        sel = lanes == first
        new = tl.where(moved, tl.sum(tl.where(sel[:, None], cand, 0.0), axis=0), y)
        f_new = tl.where(moved, tl.sum(tl.where(sel, f_c, 0.0), axis=0), f_y)
        last = tl.exp2(2.0 - NB)
        beta = tl.minimum(tl.where(moved, tl.sum(tl.where(sel, betas, 0.0), axis=0), beta * last),
                          beta_max)
        y, t, mu, f_mu = _momentum(new, f_new, mu, f_mu, t)
    return mu


@triton.jit
def _psi2(a, m, d, b0, b1, s0, c, t):
    """psi at mu = (t, 1 - t) for K = 2, from the normalised Gram entries a = G00, m = G01,
    d = G11 (scalar form of ``_psi``)."""
    q = t * t * a + 2 * t * (1 - t) * m + (1 - t) * (1 - t) * d
    return t * b0 + (1 - t) * b1 + c * s0 * tl.sqrt(tl.maximum(q, 0.0))


@triton.jit
def _pgd2(G, rows, cols, c, iters, beta0, beta_max, NB: tl.constexpr):
    """``_pgd`` specialised to K = 2 in scalar arithmetic: the same iterates, without the
    cross-thread reductions that make the tile version latency-bound.

    On the 2-simplex mu = (t, 1 - t), the projection of (x0, x1) is t = clamp((x0 - x1 + 1) / 2,
    0, 1), so a step of size beta from t moves to clamp(t - beta (grad0 - grad1) / 2, 0, 1), with
    grad . d = delta (grad0 - grad1) and ||d||^2 = 2 delta^2. The tile version scores all NB
    candidate steps at once and keeps the largest accepted one; here they are tried largest first
    and the loop stops at the first accepted one (usually the first or second): the same choice.
    """
    a = tl.sum(tl.sum(tl.where((rows[:, None] == 0) & (cols[None, :] == 0), G, 0.0), 1), 0)
    m = tl.sum(tl.sum(tl.where((rows[:, None] == 0) & (cols[None, :] == 1), G, 0.0), 1), 0)
    d = tl.sum(tl.sum(tl.where((rows[:, None] == 1) & (cols[None, :] == 1), G, 0.0), 1), 0)
    b0 = a + m
    b1 = m + d
    s0 = tl.sqrt(tl.maximum(b0 + b1, 0.0))
    slack = 16 * 1.1920928955078125e-07 * (b0 + b1 + 1.0)
    t_mu = a * 0.0 + 0.5
    f_mu = _psi2(a, m, d, b0, b1, s0, c, t_mu)
    t_y = t_mu
    mom = a * 0.0 + 1.0
    beta = a * 0.0 + beta0
    for _ in range(iters):
        gy0 = a * t_y + m * (1 - t_y)
        gy1 = m * t_y + d * (1 - t_y)
        nw = tl.sqrt(tl.maximum(t_y * gy0 + (1 - t_y) * gy1, 0.0))
        gd = (b0 - b1) + c * s0 * (gy0 - gy1) / tl.maximum(nw, TINY)  # grad0 - grad1
        f_y = _psi2(a, m, d, b0, b1, s0, c, t_y)
        tol = slack * (1.0 + tl.abs(f_y))
        t_new = t_y
        f_new = f_y
        beta_new = beta * tl.exp2(2.0 - NB)  # no candidate accepted: shrink past the ladder
        b_i = beta * 2.0
        i = 0
        while i < NB:  # candidate steps 2 beta, beta, beta / 2, ...: first accepted wins
            t_c = tl.minimum(tl.maximum(t_y - 0.5 * b_i * gd, 0.0), 1.0)
            delta = t_c - t_y
            f_c = _psi2(a, m, d, b0, b1, s0, c, t_c)
            bound = f_y + delta * gd + (2 * delta * delta) / (2 * b_i)
            if f_c <= bound + tol:
                t_new = t_c
                f_new = f_c
                beta_new = b_i
                i = NB
            else:
                b_i = b_i * 0.5
                i += 1
        beta = tl.minimum(beta_new, beta_max)
        t_y, mom, t_mu, f_mu = _momentum(t_new, f_new, t_mu, f_mu, mom)
    return tl.where(rows == 0, t_mu, tl.where(rows == 1, 1.0 - t_mu, 0.0))


@triton.jit
def _exact2(G, rows, cols, c, iters):
    """K = 2 bisection on the sign of dpsi/dt, mu = (t, 1 - t) (reference ``_exact2``)."""
    g00 = tl.sum(tl.sum(tl.where((rows[:, None] == 0) & (cols[None, :] == 0), G, 0.0), 1), 0)
    g01 = tl.sum(tl.sum(tl.where((rows[:, None] == 0) & (cols[None, :] == 1), G, 0.0), 1), 0)
    g11 = tl.sum(tl.sum(tl.where((rows[:, None] == 1) & (cols[None, :] == 1), G, 0.0), 1), 0)
    b0, b1 = g00 + g01, g01 + g11
    s0 = tl.sqrt(tl.maximum(b0 + b1, 0.0))
    lo = g00 * 0.0
    hi = lo + 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        down = _slope2(g00, g01, g11, b0, b1, s0, c, mid) < 0
        lo = tl.where(down, mid, lo)
        hi = tl.where(down, hi, mid)
    zero_ok = _slope2(g00, g01, g11, b0, b1, s0, c, lo * 0.0) >= 0
    one_ok = _slope2(g00, g01, g11, b0, b1, s0, c, lo * 0.0 + 1.0) <= 0
    t = tl.where(zero_ok, 0.0, tl.where(one_ok, 1.0, (lo + hi) / 2))
    return tl.where(rows == 0, t, tl.where(rows == 1, 1.0 - t, 0.0))


@triton.jit
def _slope2(g00, g01, g11, b0, b1, s0, c, t):
    gm0 = t * g00 + (1 - t) * g01
    gm1 = t * g01 + (1 - t) * g11
    nw = tl.sqrt(tl.maximum(t * gm0 + (1 - t) * gm1, 0.0))
    curv = tl.where(nw > 0, (gm0 - gm1) / tl.maximum(nw, TINY), 0.0)
    return (b0 - b1) + c * s0 * curv


@triton.jit
def solve_and_combine(G, rows, cols, k, c, iters, beta0, beta_max, rel,
                      EXACT: tl.constexpr, NB: tl.constexpr, KP: tl.constexpr):
    """From a raw [KP, KP] Gram tile: (mu, alpha, status bits, finite) per reference
    ``solve_mu`` + ``combine_weights``. Non-finite G -> uniform mu, alpha 0."""
    valid = rows < k
    finite = tl.sum(tl.sum((G != G) | (tl.abs(G) == float("inf")), 1), 0) == 0
    G = tl.where(finite, G, 0.0)
    diag = tl.where(rows[:, None] == cols[None, :], G, 0.0)
    tr = tl.sum(tl.sum(diag, 1), 0)
    gn = G / tl.maximum(tr, TINY)
    if EXACT:
        mu = _exact2(gn, rows, cols, c, iters)
    elif KP == 2:  # K = 2, the paper's case: scalar form, same iterates
        mu = _pgd2(gn, rows, cols, c, iters, beta0, beta_max, NB)
    else:
        mu = _pgd(gn, valid, k, c, iters, beta0, beta_max, NB)
    mu = tl.where(finite, mu, tl.where(valid, 1.0 / k, 0.0))
    g0_sq = tl.sum(tl.sum(G, 1), 0)
    gw_sq = tl.sum(_matvec(G, mu) * mu, axis=0)
    zero_g0 = finite & (g0_sq <= rel * tr)
    zero_gw = finite & (zero_g0 == 0) & (gw_sq <= rel * tr)
    scale = c * tl.sqrt(tl.maximum(g0_sq, 0.0)) / tl.sqrt(tl.maximum(gw_sq, TINY))
    alpha = tl.where(zero_g0 | zero_gw, 1.0, 1.0 + scale * mu)
    alpha = tl.where(finite & valid, alpha, 0.0)
    status = zero_g0.to(tl.float32) * 2.0 + zero_gw.to(tl.float32) * 4.0
    return mu, alpha, status, finite


@triton.jit
def _solve_mu_kernel(gram_ptr, mu_ptr, k, c, iters, beta0, beta_max, rel,
                     KP: tl.constexpr, EXACT: tl.constexpr, NB: tl.constexpr):
    rows = tl.arange(0, KP)
    cols = tl.arange(0, KP)
    m = (rows[:, None] < k) & (cols[None, :] < k)
    G = tl.load(gram_ptr + rows[:, None] * k + cols[None, :], mask=m, other=0.0)
    mu, _a, _s, _f = solve_and_combine(G, rows, cols, k, c, iters, beta0, beta_max, rel,
                                       EXACT, NB, KP)
    tl.store(mu_ptr + rows, mu, mask=rows < k)


def solve_mu(gram: torch.Tensor, c: float, solver: str, iters: int, beta0: float,
             beta_max: float, backtracks: int, rel: float) -> torch.Tensor:
    """Launch one program that solves the dual for a float32 [K, K] Gram matrix; returns mu."""
    k = gram.shape[0]
    g = gram.contiguous().float()
    mu = torch.empty(k, dtype=torch.float32, device=g.device)
    _solve_mu_kernel[(1,)](g, mu, k, float(c), int(iters), float(beta0), float(beta_max),
                           float(rel), KP=max(2, triton.next_power_of_2(k)),
                           EXACT=solver == "exact", NB=backtracks)
    return mu
