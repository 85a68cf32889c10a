"""Triton device functions for the UVS K x K solve (paper eqs. 9-16) on a Gram matrix, and a
one-program kernel that exposes them as the ``solve_mu`` op.

The maths and every choice (float64 on the trace-normalised Gram, FISTA-accelerated projected
gradient with backtracking and the exact finish on the support, K = 2 bisection, the update's
weights at Pareto-stationary points, degenerate-input flags) are those of
``csdfd.ops.solver`` / ``csdfd.ops.reference``; this file only restates them in Triton.
Vectors are padded to KP = next_pow2(K) lanes; ``valid`` masks the real ones. K = 2, the
paper's case, runs in scalar code (no cross-thread reductions).
"""

import torch
import triton
import triton.language as tl

from .kkt import EPS64, INF, KKT_TOL, POLISH_ROUNDS, face, face2, nnls, nnls2

TINY = tl.constexpr(1e-30)
NEG = tl.constexpr(-1e30)
UNIT = tl.constexpr(2.0**-24)  # float32 Gram matrices: stats.UNIT_ROUNDOFF[float32]
NNLS_TOL = tl.constexpr(max(1e-13, 16 * 2.0**-24))  # solver.nnls_tol(UNIT)


@triton.jit
def _matvec(G, m):
    """(G m)_i for a [KP, KP] tile and a [KP] vector."""
    return tl.sum(G * m[None, :], axis=1)


@triton.jit
def _psi(G, b, r, m):
    """Dual objective of eq. 15 at one point m ([KP])."""
    gw2 = tl.sum(_matvec(G, m) * m, axis=0)
    return tl.sum(m * b, axis=0) + r * tl.sqrt(tl.maximum(gw2, 0.0))


@triton.jit
def _psi_rows(G, b, r, M):
    """Dual objective of eq. 15 at each row of M ([NB, KP])."""
    gm = tl.sum(M[:, None, :] * G[None, :, :], axis=2)
    gw2 = tl.sum(gm * M, axis=1)
    return tl.sum(M * b[None, :], axis=1) + r * tl.sqrt(tl.maximum(gw2, 0.0))


@triton.jit
def _project_rows(X, valid):
    """Euclidean projection of each row of X ([NB, KP]) onto the simplex over the valid lanes.

    Sort-free form of the sort-based rule:
    theta* = max_i (sum_{j: x_j >= x_i} x_j - 1) / #{j: x_j >= x_i}.
    """
    xv = tl.where(valid[None, :], X, NEG)
    ge = (xv[:, None, :] >= xv[:, :, None]) & valid[None, None, :]  # [NB, i, j]: x_j >= x_i
    s = tl.sum(tl.where(ge, xv[:, None, :], 0.0), axis=2)
    n = tl.sum(ge.to(tl.float64), axis=2)
    theta_i = tl.where(valid[None, :], (s - 1.0) / tl.maximum(n, 1.0), NEG)
    theta = tl.max(theta_i, axis=1)
    return tl.where(valid[None, :], tl.maximum(X - theta[:, None], 0.0), 0.0)


@triton.jit
def _momentum(new, f_new, mu, f_mu, t):
    """FISTA extrapolation with restart (solver.pgd): returns (y, t, mu, f_mu).
    ``new`` / ``mu`` are points on the simplex, as [KP] vectors or as K = 2 scalars t."""
    worse = f_new > f_mu
    t_next = (1.0 + tl.sqrt(1.0 + 4.0 * t * t)) / 2.0
    y = tl.where(worse, mu, new + ((t - 1.0) / t_next) * (new - mu))
    return y, tl.where(worse, 1.0, t_next), tl.where(worse, mu, new), tl.minimum(f_mu, f_new)


@triton.jit
def _pgd(G, b, r, valid, norms, k, iters, beta0, beta_max, NB: tl.constexpr):
    """FISTA-accelerated projected gradient with backtracking (solver.pgd), float64; ``norms``:
    ||g_j||, the bound on g_j . gw / ||gw||."""
    lanes = tl.arange(0, NB)
    mu = tl.where(valid, 1.0, 0.0).to(tl.float64) / k
    f_mu = _psi(G, b, r, mu)
    y = mu
    t = f_mu * 0.0 + 1.0
    beta = f_mu * 0.0 + beta0
    ladder = tl.exp2(1.0 - lanes.to(tl.float32)).to(tl.float64)
    slack = 16 * EPS64 * (tl.sum(b, axis=0) + 1.0)
    for _ in range(iters):
        gy = _matvec(G, y)
        nw = tl.sqrt(tl.maximum(tl.sum(gy * y, axis=0), 0.0))
        grad = b + r * tl.minimum(tl.maximum(gy / tl.maximum(nw, TINY), -norms), norms)
        f_y = _psi(G, b, r, y)
        betas = beta * ladder
        cand = _project_rows(y[None, :] - betas[:, None] * grad[None, :], valid)
        d = cand - y[None, :]
        f_c = _psi_rows(G, b, r, cand)
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
def _inv_norm(gw_sq):
    """1 / ||gw|| from ||gw||^2 (solver.inv_norm): inf where gw = 0."""
    return tl.where(gw_sq > TINY, 1.0 / tl.sqrt(tl.maximum(gw_sq, TINY)), INF)


@triton.jit
def _polish(G, b, r, mu, valid, rows, cols, k, KP: tl.constexpr):
    """The exact finish (solver.polish) on [KP, KP] tiles: (mu, 1 / ||gw||)."""
    lanes = rows
    f_best = _psi(G, b, r, mu)
    inv = _inv_norm(tl.sum(_matvec(G, mu) * mu, axis=0))
    slack = 16 * EPS64 * (1.0 + tl.abs(f_best))
    s = valid & (mu > 0)
    live = k > 0
    for _ in range(k * POLISH_ROUNDS.value):
        if live:
            nu, p, ok = face(G, b, r, s, rows, cols, KP)
            neg = s & (nu < 0)
            any_neg = tl.sum(neg.to(tl.int32), axis=0) > 0
            cand = tl.where(s, tl.maximum(nu, 0.0), 0.0)
            total = tl.sum(cand, axis=0)
            cand = cand / tl.maximum(total, TINY)
            f = _psi(G, b, r, cand)
            gains = b + r * _matvec(G, nu)
            viol = valid & (s == 0) & (gains < p - KKT_TOL * (1.0 + tl.abs(p)))
            any_viol = tl.sum(viol.to(tl.int32), axis=0) > 0
            better = ok & (any_neg == 0) & ((f <= f_best + slack) | (any_viol == 0))
            mu = tl.where(better, cand, mu)
            f_best = tl.where(better, f, f_best)
            inv = tl.where(better, total, inv)
            drop = ok & any_neg
            add = ok & (any_neg == 0) & any_viol
            low_nu = tl.min(tl.where(neg, nu, INF), axis=0)
            j_drop = tl.min(tl.where(neg & (nu == low_nu), lanes, KP), axis=0)
            low_gain = tl.min(tl.where(viol, gains, INF), axis=0)
            j_add = tl.min(tl.where(viol & (gains == low_gain), lanes, KP), axis=0)
            s = tl.where(drop, s & (lanes != j_drop), tl.where(add, s | (lanes == j_add), s))
            live = drop | add
    return mu, inv


@triton.jit
def _inside(delta, norms, r, k):
    """1 + delta / (1 + rho), rho = K u (sum_j |delta_j| ||g_j||)^2 / r^2 (solver._inside)."""
    s = tl.sum(tl.abs(delta) * norms, axis=0)
    return 1.0 + delta / (1.0 + k * UNIT * s * s / tl.maximum(r * r, TINY))


@triton.jit
def _weights(G, b, r, mu, inv, valid, rows, cols, k, KP: tl.constexpr):
    """alpha and whether the stationary candidate won (solver.weights), on tiles; ``inv``:
    1 / ||gw(mu)|| (inf: gw = 0)."""
    finite_inv = tl.abs(inv) != INF
    norms = tl.sqrt(tl.maximum(tl.sum(tl.where(rows[:, None] == cols[None, :], G, 0.0), 1), 0.0))
    top = tl.max(norms, axis=0)
    alpha_a = tl.where(valid, _inside(r * mu * tl.where(finite_inv, inv, 0.0), norms, r, k), 0.0)
    lam = nnls(G, b, NNLS_TOL, valid, rows, cols, k, KP)
    dist = tl.sqrt(tl.maximum(tl.sum(_matvec(G, lam) * lam, axis=0), 0.0))
    shrink = tl.where(dist > r, r / tl.maximum(dist, TINY), 1.0)
    alpha_b = tl.where(valid, _inside(shrink * lam, norms, r, k), 0.0)
    err_a = k * UNIT * tl.sum(tl.abs(alpha_a) * norms, axis=0) * top
    err_b = k * UNIT * tl.sum(tl.abs(alpha_b) * norms, axis=0) * top
    low_a = tl.min(tl.where(valid, _matvec(G, alpha_a), INF), axis=0) - err_a
    low_a = tl.where(finite_inv, low_a, -INF)
    low_b = tl.min(tl.where(valid, _matvec(G, alpha_b), INF), axis=0) - err_b
    use_b = low_b > low_a + KKT_TOL
    return tl.where(use_b, alpha_b, alpha_a), use_b


@triton.jit
def _psi2(a, m, d, b0, b1, r, u0, u1):
    """psi at mu = (u0, u1) for K = 2 from the normalised Gram entries a = G00, m = G01,
    d = G11 (scalar form of ``_psi``)."""
    q = u0 * (u0 * a + u1 * m) + u1 * (u0 * m + u1 * d)
    return u0 * b0 + u1 * b1 + r * tl.sqrt(tl.maximum(q, 0.0))


@triton.jit
def _pgd2(a, m, d, b0, b1, r, iters, beta0, beta_max, NB: tl.constexpr):
    """``_pgd`` specialised to K = 2 in scalar arithmetic: the same iterates, without the
    cross-thread reductions that make the tile version latency-bound. Returns t, mu = (t, 1 - t).

    On the 2-simplex mu = (t, 1 - t), the projection of (x0, x1) is t = clamp((x0 - x1 + 1) / 2,
    0, 1), so a step of size beta from t moves to clamp(t - beta (grad0 - grad1) / 2, 0, 1), with
    grad . d = delta (grad0 - grad1) and ||d||^2 = 2 delta^2. The tile version scores all NB
    candidate steps at once and keeps the largest accepted one; here they are tried largest first
    and the loop stops at the first accepted one (usually the first or second): the same choice.
    """
    slack = 16 * EPS64 * (b0 + b1 + 1.0)
    n0 = tl.sqrt(tl.maximum(a, 0.0))
    n1 = tl.sqrt(tl.maximum(d, 0.0))
    t_mu = a * 0.0 + 0.5
    f_mu = _psi2(a, m, d, b0, b1, r, t_mu, 1.0 - t_mu)
    t_y = t_mu
    mom = a * 0.0 + 1.0
    beta = a * 0.0 + beta0
    for _ in range(iters):
        gy0 = a * t_y + m * (1 - t_y)
        gy1 = m * t_y + d * (1 - t_y)
        nw = tl.maximum(tl.sqrt(tl.maximum(t_y * gy0 + (1 - t_y) * gy1, 0.0)), TINY)
        u0 = tl.minimum(tl.maximum(gy0 / nw, -n0), n0)  # g_j . gw / ||gw|| within ||g_j||
        u1 = tl.minimum(tl.maximum(gy1 / nw, -n1), n1)
        gd = (b0 - b1) + r * (u0 - u1)  # grad0 - grad1
        f_y = _psi2(a, m, d, b0, b1, r, t_y, 1.0 - t_y)
        tol = slack * (1.0 + tl.abs(f_y))
        t_new = t_y
        f_new = f_y
        beta_new = beta * tl.exp2(2.0 - NB)  # no candidate accepted: shrink past the ladder
        b_i = beta * 2.0
        i = 0
        while i < NB:  # candidate steps 2 beta, beta, beta / 2, ...: first accepted wins
            t_c = tl.minimum(tl.maximum(t_y - 0.5 * b_i * gd, 0.0), 1.0)
            delta = t_c - t_y
            f_c = _psi2(a, m, d, b0, b1, r, t_c, 1.0 - t_c)
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
    return t_mu


@triton.jit
def _slope2(a, m, d, b0, b1, r, t):
    gm0 = t * a + (1 - t) * m
    gm1 = t * m + (1 - t) * d
    nw = tl.sqrt(tl.maximum(t * gm0 + (1 - t) * gm1, 0.0))
    curv = tl.where(nw > 0, (gm0 - gm1) / tl.maximum(nw, TINY), 0.0)
    return (b0 - b1) + r * curv


@triton.jit
def _exact2(a, m, d, b0, b1, r, iters):
    """K = 2 bisection on the sign of dpsi/dt, mu = (t, 1 - t) (solver.exact2). Returns t."""
    lo = a * 0.0
    hi = lo + 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        down = _slope2(a, m, d, b0, b1, r, mid) < 0
        lo = tl.where(down, mid, lo)
        hi = tl.where(down, hi, mid)
    zero_ok = _slope2(a, m, d, b0, b1, r, lo * 0.0) >= 0
    one_ok = _slope2(a, m, d, b0, b1, r, lo * 0.0 + 1.0) <= 0
    return tl.where(zero_ok, 0.0, tl.where(one_ok, 1.0, (lo + hi) / 2))


@triton.jit
def _polish2(a, m, d, b0, b1, r, u0, u1):
    """``_polish`` for K = 2 in scalars: the faces {0, 1}, {0} and {1}, the same rules.
    Returns (mu0, mu1, 1 / ||gw||)."""
    f_best = _psi2(a, m, d, b0, b1, r, u0, u1)
    inv = _inv_norm(_gw_sq2(a, m, d, u0, u1))
    slack = 16 * EPS64 * (1.0 + tl.abs(f_best))
    s0 = u0 > 0
    s1 = u1 > 0
    live = f_best == f_best
    for _ in tl.static_range(2 * POLISH_ROUNDS):
        if live:
            nu0, nu1, p, ok = face2(a, m, d, b0, b1, r, s0, s1)
            n0 = s0 & (nu0 < 0)
            n1 = s1 & (nu1 < 0)
            any_neg = n0 | n1
            c0 = tl.where(s0, tl.maximum(nu0, 0.0), 0.0)
            c1 = tl.where(s1, tl.maximum(nu1, 0.0), 0.0)
            total = c0 + c1
            c0 = c0 / tl.maximum(total, TINY)
            c1 = c1 / tl.maximum(total, TINY)
            f = _psi2(a, m, d, b0, b1, r, c0, c1)
            gain0 = b0 + r * (a * nu0 + m * nu1)
            gain1 = b1 + r * (m * nu0 + d * nu1)
            tol = KKT_TOL * (1.0 + tl.abs(p))
            v0 = (s0 == 0) & (gain0 < p - tol)
            v1 = (s1 == 0) & (gain1 < p - tol)
            better = ok & (any_neg == 0) & ((f <= f_best + slack) | ((v0 | v1) == 0))
            u0 = tl.where(better, c0, u0)
            u1 = tl.where(better, c1, u1)
            f_best = tl.where(better, f, f_best)
            inv = tl.where(better, total, inv)
            drop = ok & any_neg
            add = ok & (any_neg == 0) & (v0 | v1)
            drop0 = n0 & ((n1 == 0) | (nu0 <= nu1))  # the most negative, the first on ties
            add0 = v0 & ((v1 == 0) | (gain0 <= gain1))
            s0 = tl.where(drop, s0 & (drop0 == 0), tl.where(add, s0 | add0, s0))
            s1 = tl.where(drop, s1 & (drop0 | (n1 == 0)), tl.where(add, s1 | (add0 == 0), s1))
            live = drop | add
    return u0, u1, inv


@triton.jit
def _gw_sq2(a, m, d, u0, u1):
    return u0 * (a * u0 + m * u1) + u1 * (m * u0 + d * u1)


@triton.jit
def _weights2(a, m, d, b0, b1, r, u0, u1, inv):
    """``_weights`` for K = 2 in scalars: (alpha0, alpha1, stationary candidate chosen)."""
    finite_inv = tl.abs(inv) != INF
    n0 = tl.sqrt(tl.maximum(a, 0.0))
    n1 = tl.sqrt(tl.maximum(d, 0.0))
    top = tl.maximum(n0, n1)
    scale = r * tl.where(finite_inv, inv, 0.0)
    s_a = tl.abs(scale * u0) * n0 + tl.abs(scale * u1) * n1
    keep_a = 1.0 / (1.0 + 2 * UNIT * s_a * s_a / tl.maximum(r * r, TINY))  # _inside, K = 2
    aa0 = 1.0 + scale * u0 * keep_a
    aa1 = 1.0 + scale * u1 * keep_a
    l0, l1 = nnls2(a, d, b0, b1, NNLS_TOL)
    dist = tl.sqrt(tl.maximum(l0 * (a * l0 + m * l1) + l1 * (m * l0 + d * l1), 0.0))
    shrink = tl.where(dist > r, r / tl.maximum(dist, TINY), 1.0)
    s_b = tl.abs(shrink * l0) * n0 + tl.abs(shrink * l1) * n1
    keep_b = 1.0 / (1.0 + 2 * UNIT * s_b * s_b / tl.maximum(r * r, TINY))
    ab0 = 1.0 + shrink * l0 * keep_b
    ab1 = 1.0 + shrink * l1 * keep_b
    err_a = 2 * UNIT * (tl.abs(aa0) * n0 + tl.abs(aa1) * n1) * top
    err_b = 2 * UNIT * (tl.abs(ab0) * n0 + tl.abs(ab1) * n1) * top
    low_a = tl.minimum(a * aa0 + m * aa1, m * aa0 + d * aa1) - err_a
    low_a = tl.where(finite_inv, low_a, -INF)
    low_b = tl.minimum(a * ab0 + m * ab1, m * ab0 + d * ab1) - err_b
    use_b = low_b > low_a + KKT_TOL
    return tl.where(use_b, ab0, aa0), tl.where(use_b, ab1, aa1), use_b


@triton.jit
def _entry(G, rows, cols, i: tl.constexpr, j: tl.constexpr):
    return tl.sum(tl.sum(tl.where((rows[:, None] == i) & (cols[None, :] == j), G, 0.0), 1), 0)


@triton.jit
def solve_and_combine(G, rows, cols, k, c, iters, beta0, beta_max, rel,
                      EXACT: tl.constexpr, NB: tl.constexpr, KP: tl.constexpr):
    """From a raw float32 [KP, KP] Gram tile: (mu, alpha, status bits, finite) per reference
    ``solve_mu`` + ``combine_weights``, in float64. Non-finite G -> uniform mu, alpha 0."""
    valid = rows < k
    finite = tl.sum(tl.sum(((G != G) | (tl.abs(G) == float("inf"))).to(tl.int32), 1), 0) == 0
    G = tl.where(finite, G, 0.0).to(tl.float64)
    tr = tl.sum(tl.sum(tl.where(rows[:, None] == cols[None, :], G, 0.0), 1), 0)
    gn = G / tl.maximum(tr, TINY)
    b = tl.sum(gn, axis=0)
    g0_sq = tl.sum(b, axis=0)
    r = c * tl.sqrt(tl.maximum(g0_sq, 0.0))  # float64 (c arrives as float32)
    if KP == 2:  # K = 2, the paper's case: scalar form, same maths
        a = _entry(gn, rows, cols, 0, 0)
        m = _entry(gn, rows, cols, 0, 1)
        d = _entry(gn, rows, cols, 1, 1)
        b0 = a + m
        b1 = m + d
        if EXACT:
            u0 = _exact2(a, m, d, b0, b1, r, iters)
            u1 = 1.0 - u0
            inv = _inv_norm(_gw_sq2(a, m, d, u0, u1))
        else:
            u0 = _pgd2(a, m, d, b0, b1, r, iters, beta0, beta_max, NB)
            u0, u1, inv = _polish2(a, m, d, b0, b1, r, u0, 1.0 - u0)
        al0, al1, stationary = _weights2(a, m, d, b0, b1, r, u0, u1, inv)
        mu = tl.where(rows == 0, u0, tl.where(rows == 1, u1, 0.0))
        alpha = tl.where(rows == 0, al0, tl.where(rows == 1, al1, 0.0))
    else:
        norms = tl.sqrt(tl.maximum(tl.sum(tl.where(rows[:, None] == cols[None, :], gn, 0.0), 1),
                                   0.0))
        mu = _pgd(gn, b, r, valid, norms, k, iters, beta0, beta_max, NB)
        mu, inv = _polish(gn, b, r, mu, valid, rows, cols, k, KP)
        alpha, stationary = _weights(gn, b, r, mu, inv, valid, rows, cols, k, KP)
    mu = tl.where(finite, mu, tl.where(valid, 1.0, 0.0).to(tl.float64) / k)
    zero_g0 = finite & (g0_sq <= rel)
    zero_gw = finite & (zero_g0 == 0) & stationary
    alpha = tl.where(zero_g0, 1.0, alpha)
    alpha = tl.where(finite & valid, alpha, 0.0)
    status = zero_g0.to(tl.float32) * 2.0 + zero_gw.to(tl.float32) * 4.0
    return mu.to(tl.float32), alpha.to(tl.float32), status, finite


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
