"""Triton device functions for the small exact pieces of the UVS K x K solve, in float64: a
solve on an index set, the dual's optimality conditions on a face of the simplex, and
non-negative least squares (Lawson-Hanson). They restate ``csdfd.ops.solver`` (solve_on, face,
nnls) on [KP, KP] tiles, KP = next_pow2(K), and in scalar form for K = 2.

Index sets are [KP] boolean vectors. The reference runs fixed loop counts with masks (it may
not sync); here a finished loop is skipped, which changes nothing.
"""

import triton
import triton.language as tl

RIDGE = tl.constexpr(1e-14)
KKT_TOL = tl.constexpr(1e-13)
POLISH_ROUNDS = tl.constexpr(2)
NNLS_ROUNDS = tl.constexpr(3)
NNLS_REFINE = tl.constexpr(2)
EPS64 = tl.constexpr(2.220446049250313e-16)
INF = tl.constexpr(float("inf"))


@triton.jit
def _pick(v, lanes, i):
    """v[i] of a [KP] vector, as a scalar."""
    return tl.sum(tl.where(lanes == i, v, 0.0), axis=0)


@triton.jit
def solve_on(H, r1, r2, s, ridge, rows, cols, KP: tl.constexpr):
    """x with (H_SS + ridge I) x_S = rhs_S and x = 0 off S, for two right-hand sides r1, r2
    ([KP] float64): Gauss-Jordan without pivoting (the system is symmetric positive definite on
    S, the identity off S), unrolled over the KP pivots."""
    eye = rows[:, None] == cols[None, :]
    sc = s[:, None] & s[None, :]
    M = tl.where(sc, H, tl.where(eye, 1.0, 0.0)) + tl.where(eye & s[:, None], ridge, 0.0)
    x1 = tl.where(s, r1, 0.0)
    x2 = tl.where(s, r2, 0.0)
    for p in tl.static_range(KP):
        rowp = tl.sum(tl.where(rows[:, None] == p, M, 0.0), axis=0)  # M[p, :]
        colp = tl.sum(tl.where(cols[None, :] == p, M, 0.0), axis=1)  # M[:, p]
        piv = _pick(rowp, cols, p)
        rowp = rowp / piv
        p1 = _pick(x1, rows, p) / piv
        p2 = _pick(x2, rows, p) / piv
        M = tl.where(rows[:, None] == p, rowp[None, :], M - colp[:, None] * rowp[None, :])
        x1 = tl.where(rows == p, p1, x1 - colp * p1)
        x2 = tl.where(rows == p, p2, x2 - colp * p2)
    return tl.where(s, x1, 0.0), tl.where(s, x2, 0.0)


@triton.jit
def _quadratic(qa, qb, qc):
    """The larger root of qa p^2 - 2 qb p + qc = 0 without cancellation, and the discriminant."""
    disc = qb * qb - qa * qc
    root = tl.sqrt(tl.maximum(disc, 0.0))
    big = qb + tl.where(qb >= 0, root, -root)
    p = tl.where(qb >= 0, big / tl.where(qa == 0, 1.0, qa), qc / tl.where(big == 0, 1.0, big))
    return p, disc


@triton.jit
def face(G, b, r, s, rows, cols, KP: tl.constexpr):
    """KKT point of the dual on the face S (solver.face): (nu, p, ok)."""
    x, y = solve_on(G, b * 0.0 + 1.0, b, s, RIDGE, rows, cols, KP)
    qa = tl.sum(x, axis=0)
    qb = tl.sum(y, axis=0)
    qc = tl.sum(b * y, axis=0) - r * r
    p, disc = _quadratic(qa, qb, qc)
    nu = (p * x - y) / tl.where(r > 0, r, 1.0)
    fin = tl.sum(((tl.abs(nu) == INF) | (nu != nu)).to(tl.int32), axis=0) == 0
    ok = (r > 0) & (disc >= 0) & (qa > 0) & (qa * RIDGE < 1e-3) & (tl.sum(nu, axis=0) > 0) & fin
    return nu, p, ok & (p == p) & (tl.abs(p) != INF)


@triton.jit
def nnls(H, q, tol, valid, rows, cols, k, KP: tl.constexpr):
    """min_{x >= 0} 1/2 x^T H x + q^T x over the valid lanes, Lawson-Hanson in
    NNLS_ROUNDS * K steps of one solve each (solver.nnls)."""
    lanes = rows
    x = q * 0.0
    s = lanes < 0
    pending = k < 0  # inside LH's inner loop: the last solve left S's orthant
    live = k > 0
    for _ in range(k * NNLS_ROUNDS.value):
        if live:
            w = -(tl.sum(H * x[None, :], axis=1) + q)
            cand = valid & (s == 0) & (w > tol)
            live = pending | (tl.sum(cand.to(tl.int32), axis=0) > 0)
            top = tl.max(tl.where(cand, w, -INF), axis=0)
            j = tl.min(tl.where(cand & (w == top), lanes, KP), axis=0)
            s = s | (live & (pending == 0) & (lanes == j))
            z, _z = solve_on(H, -q, -q, s, tol, rows, cols, KP)
            for _r in tl.static_range(NNLS_REFINE):  # iterated Tikhonov (solver.NNLS_REFINE)
                res = -q - tl.sum(H * z[None, :], axis=1)
                dz, _dz = solve_on(H, res, res, s, tol, rows, cols, KP)
                z = z + dz
            bad = s & (z <= 0)
            fits = tl.sum(bad.to(tl.int32), axis=0) == 0
            gap = x - z
            ratio = tl.where(bad & (gap > 0), x / tl.where(gap > 0, gap, 1.0), INF)
            ratio = tl.where(bad & (gap <= 0), 0.0, ratio)
            t = tl.minimum(tl.maximum(tl.min(ratio, axis=0), 0.0), 1.0)
            stepped = x + t * (z - x)
            s = tl.where(live & (fits == 0), s & (stepped > KKT_TOL), s)
            x = tl.where(live, tl.where(fits, z, tl.where(s, tl.maximum(stepped, 0.0), 0.0)), x)
            pending = live & (fits == 0)
    return x


@triton.jit
def solve2(a, m, d, s0, s1, r0, r1):
    """solve_on for K = 2 in scalars: (G_SS + RIDGE I) x_S = r_S with G = [[a, m], [m, d]],
    the same two Gauss-Jordan pivots."""
    m00 = tl.where(s0, a + RIDGE, 1.0)
    m11 = tl.where(s1, d + RIDGE, 1.0)
    m01 = tl.where(s0 & s1, m, 0.0)
    u01 = m01 / m00
    x0 = tl.where(s0, r0, 0.0) / m00
    x1 = tl.where(s1, r1, 0.0) - m01 * x0
    p11 = m11 - m01 * u01
    x1 = x1 / p11
    x0 = x0 - u01 * x1
    return tl.where(s0, x0, 0.0), tl.where(s1, x1, 0.0)


@triton.jit
def face2(a, m, d, b0, b1, r, s0, s1):
    """face for K = 2 in scalars: (nu0, nu1, p, ok)."""
    x0, x1 = solve2(a, m, d, s0, s1, a * 0.0 + 1.0, a * 0.0 + 1.0)
    y0, y1 = solve2(a, m, d, s0, s1, b0, b1)
    p, disc = _quadratic(x0 + x1, y0 + y1, b0 * y0 + b1 * y1 - r * r)
    rr = tl.where(r > 0, r, 1.0)
    nu0 = (p * x0 - y0) / rr
    nu1 = (p * x1 - y1) / rr
    fin = (nu0 == nu0) & (nu1 == nu1) & (tl.abs(nu0) != INF) & (tl.abs(nu1) != INF)
    fin = fin & (p == p) & (tl.abs(p) != INF)
    ok = (r > 0) & (disc >= 0) & (x0 + x1 > 0) & ((x0 + x1) * RIDGE < 1e-3) & (nu0 + nu1 > 0)
    ok = ok & fin
    return nu0, nu1, p, ok


@triton.jit
def nnls2(a, d, b0, b1, tol):
    """nnls for K = 2 (H = G, q = b): Lawson-Hanson frees the stream j with b_j < -tol (at most
    one: b_0 + b_1 = ||g0||^2 >= 0), x_j = -b_j / (G_jj + tol) (tol is also the ridge) refined
    NNLS_REFINE times, and stops there, because the other stream's gain (a d - m^2) / G_jj is
    >= 0. Returns (x0, x1)."""
    first = (-b0 > tol) & (-b0 >= -b1)
    second = (-b1 > tol) & (first == 0)
    x0 = tl.where(first, -b0 / (a + tol), 0.0)
    x1 = tl.where(second, -b1 / (d + tol), 0.0)
    for _r in tl.static_range(NNLS_REFINE):  # iterated Tikhonov (solver.NNLS_REFINE)
        x0 = tl.where(first, x0 + (-b0 - a * x0) / (a + tol), 0.0)
        x1 = tl.where(second, x1 + (-b1 - d * x1) / (d + tol), 0.0)
    return x0, x1
