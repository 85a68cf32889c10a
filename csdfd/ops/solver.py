"""The K x K part of UVS, part of the reference specification (:mod:`csdfd.ops.reference`):
the dual solve for mu (paper eqs. 15-16) and the choice of the update's weights alpha (eq. 14,
and the primal, eqs. 9-10, where eq. 14 is 0/0). Pure torch, float64 whatever the gradients'
dtype (the problem is K x K, so precision is free), never a host sync. csrc/solver.h and
kernels/solve_mu.py restate it operation by operation.

Notation: the Gram matrix is trace-normalised, G = gram / trace (mu* and alpha do not depend on
the scale), b_j = g_j . g0 = (G 1)_j, s0 = ||g0|| = sqrt(1^T G 1), r = c s0 (the trust-region
radius of eq. 9), gw = sum_j mu_j g_j, psi(mu) = mu . b + r ||gw|| (eq. 15). A point
v = sum_j alpha_j g_j has the stream gains g_j . v = (G alpha)_j.

**Primal and dual.** Eq. 9 is max_v min_j g_j . v s.t. ||v - g0|| <= r. By minimax (eqs. 11-13)
its value p* equals min over the simplex of psi (eq. 15). If the dual optimum has gw* != 0, the
primal optimum is unique: v* = g0 + r gw* / ||gw*|| (eq. 14), alpha = 1 + (r / ||gw*||) mu*.

**Pareto-stationary inputs (gw* = 0).** Then 0 lies in the convex hull of the g_j, p* = psi* = 0,
eq. 14 is 0/0, and the primal optima are every v of the ball with g_j . v >= 0 for all j: the
ball intersected with the cone C = {v : g_j . v >= 0}. We return the one closest to g0,
v_B = Proj_C(g0): it lies in the ball whenever the set is non-empty, and it is the limit of
eq. 14's optimum as c rises to the smallest c with p* = 0 (below it p* < 0, gw* != 0 and that
optimum is unique), so the update is continuous in c. By Moreau's decomposition, v_B = g0 + sum_j lambda_j g_j with lambda >= 0 the
non-negative least squares solution of min_lambda 1/2 lambda^T G lambda + lambda^T b, a K x K
problem (Lawson-Hanson, :func:`nnls`). (torchjd's CAGrad returns v = 0 there, which is in the
ball only for c >= 1.) Example: rows [2] and [-1], c = 2: C = {0}, v = 0, gains (0, 0).

**Near-stationary inputs.** As ||gw*|| -> 0, eq. 14's weights grow like 1 / ||gw*||: v is a
cancelling sum of large terms, which float32 cannot write accurately, and even its distance to
g0, computed from G, carries a relative error ~ u / ||gw||^2 (u: G's unit roundoff). So both
candidates are formed, eq. 14's alpha_A and alpha_B = 1 + s lambda (s = min(1, r / ||v_B - g0||),
i.e. v_B pulled into the ball if it lies outside), each step shrunk by the uncertainty of its
length (:func:`_inside`) so that it stays in the ball, and we keep the one whose worst gain
min_j (G alpha)_j minus the rounding error of writing it (:func:`_write_error`) is larger. Both
are feasible points of eq. 9, so the choice can only raise the worst gain; status ZERO_GW says
alpha_B was chosen. At a tie (the same point) eq. 14's is kept.

**The dual solve.** ``pgd``: eq. 16's projected gradient loop (FISTA, backtracking; see
:func:`pgd`) from uniform mu, which the paper uses, then an exact finish (:func:`polish`): on the
support S of the iterate, the dual's optimality conditions (equal gains p on S) are solved in
closed form, with active-set updates of S; a KKT point is taken, any other point only where
psi does not rise. The face solve also gives 1 / ||gw|| more precisely than mu^T G mu does near
stationarity, and eq. 14 uses it. ``exact``: K = 2 bisection on the sign of psi'. Both reach
the optimum to float64 rounding on non-degenerate input (tests/test_solve_mu.py).
"""

from __future__ import annotations

import torch

#: Defaults of the mu loop (paper eq. 16 leaves them open; see pgd).
PGD_ITERS = 64
PGD_BETA0 = 1.0
#: Cap on the step: on a trace-normalised Gram one step of 64 already reaches any vertex.
PGD_BETA_MAX = 64.0
BACKTRACKS = 16
EXACT_ITERS = 64
#: Active-set rounds of the exact finish and of NNLS, per stream (K x these).
POLISH_ROUNDS = 2
NNLS_ROUNDS = 3
#: Refinement steps after each ridged NNLS solve (iterated Tikhonov): they remove the ridge's
#: bias where G resolves the solution (by (ridge / eigenvalue)^steps) and keep it where not.
NNLS_REFINE = 2
#: Ridge added to the diagonal of the (trace-normalised) face systems of the dual, so an exactly
#: dependent set of rows still gives a finite answer (NNLS uses its own, :func:`nnls_tol`).
RIDGE = 1e-14
#: Tolerance (trace-normalised gains) of the active-set tests; NNLS frees a coordinate only
#: above max(KKT_TOL, 16 u) for a Gram of unit roundoff u (float32 Grams carry ~u noise).
KKT_TOL = 1e-13
_TINY = 1e-30
_EPS64 = 2.220446049250313e-16
F64 = torch.float64


def psi(gn: torch.Tensor, b: torch.Tensor, r: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Dual objective psi(mu) = mu . b + r ||gw|| (eq. 15); ``mu`` is [K] or a batch [B, K]."""
    gw_sq = ((mu @ gn) * mu).sum(-1)
    return mu @ b + r * gw_sq.clamp_min(0).sqrt()


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``x`` ([K] or [B, K]) onto the probability simplex
    (sort-based, Held et al. 1974)."""
    u, _ = torch.sort(x, dim=-1, descending=True)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    theta_k = (torch.cumsum(u, -1) - 1) / k
    # theta* is the largest candidate threshold theta_k (they rise, peak, then fall).
    return (x - theta_k.amax(-1, keepdim=True)).clamp_min(0)


def normalized(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite, trace-normalised float64 copy of G and a flag telling whether G was finite."""
    finite = torch.isfinite(g).all()
    g = torch.where(finite, g.to(F64), torch.zeros((), dtype=F64, device=g.device))
    return g / g.diagonal().sum().clamp_min(_TINY), finite


def pgd(gn: torch.Tensor, c: float, iters: int, beta0: float) -> torch.Tensor:
    """Projected gradient descent on the simplex (eq. 16) on a trace-normalised Gram matrix.

    Each iteration is eq. 16's step mu+ = Proj(y - beta * dpsi/dmu(y)) with
    dpsi/dmu_j = b_j + r (G y)_j / ||gw(y)||. Choices the paper leaves open:

    - start: uniform mu (gw = g0 / K);
    - step: backtracking on the sufficient-decrease condition
      psi(mu+) <= psi(y) + grad . d + ||d||^2 / (2 beta), d = mu+ - y (Beck and Teboulle),
      trying beta = 2 beta_prev, beta_prev, beta_prev / 2, ... (``BACKTRACKS`` candidates at
      once; the largest that passes wins), capped at ``PGD_BETA_MAX``;
    - y: Nesterov extrapolation (FISTA) with a restart whenever psi goes up (O'Donoghue and
      Candes), so the iterates are monotone.

    If no step passes (a kink at gw = 0), mu stays put. The gradient's second term
    g_j . gw / ||gw|| is kept within its bound ||g_j|| (Cauchy-Schwarz), which rounding near
    gw = 0 would break.
    """
    k = gn.shape[0]
    b = gn.sum(0)
    r = c * b.sum().clamp_min(0).sqrt()
    norms = gn.diagonal().clamp_min(0).sqrt()
    mu = torch.full((k,), 1.0 / k, dtype=F64, device=gn.device)
    f_mu = psi(gn, b, r, mu)
    y, t = mu, gn.new_tensor(1.0)
    beta = gn.new_tensor(beta0)
    ladder = 2.0 ** (1 - torch.arange(BACKTRACKS, dtype=F64, device=gn.device))
    slack = 16 * _EPS64 * (b.sum() + 1)
    for _ in range(iters):
        gy = gn @ y
        nw = (y @ gy).clamp_min(0).sqrt()  # ||gw(y)||
        # g_j . gw / ||gw||, within its Cauchy-Schwarz bound ||g_j||: at gw ~ 0 rounding (a
        # float32 Gram is indefinite to ~u) would otherwise make it unbounded
        grad = b + r * torch.minimum(torch.maximum(gy / nw.clamp_min(_TINY), -norms), norms)
        f_y = psi(gn, b, r, y)
        betas = beta * ladder  # [B] candidate steps, largest first
        cand = project_simplex(y - betas[:, None] * grad)  # [B, K]
        d = cand - y
        f_cand = psi(gn, b, r, cand)
        ok = f_cand <= f_y + d @ grad + (d * d).sum(-1) / (2 * betas) + slack * (1 + f_y.abs())
        first, moved = torch.argmax(ok.to(torch.int8)), ok.any()  # largest accepted step
        new = torch.where(moved, cand[first], y)
        f_new = torch.where(moved, f_cand[first], f_y)
        beta = torch.where(moved, betas[first], beta * ladder[-1]).clamp(max=PGD_BETA_MAX)
        # momentum, restarted when the objective went up
        worse = f_new > f_mu
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        y = torch.where(worse, mu, new + ((t - 1) / t_next) * (new - mu))
        t = torch.where(worse, torch.ones_like(t), t_next)
        mu = torch.where(worse, mu, new)
        f_mu = torch.minimum(f_mu, f_new)
    return mu


def exact2(gn: torch.Tensor, c: float, iters: int) -> torch.Tensor:
    """Exact K = 2 dual solution: psi(t) with mu = (t, 1 - t) is convex on [0, 1], so bisection
    on the sign of dpsi/dt = (b_0 - b_1) + r ((G mu)_0 - (G mu)_1) / ||gw|| finds the minimiser
    to float64 precision (64 halvings). At a kink (||gw|| = 0) the second term is 0."""
    b = gn.sum(0)
    r = c * b.sum().clamp_min(0).sqrt()

    def slope(t: torch.Tensor) -> torch.Tensor:
        mu = torch.stack([t, 1 - t])
        gmu = gn @ mu
        nw = (mu @ gmu).clamp_min(0).sqrt()
        curv = torch.where(nw > 0, (gmu[0] - gmu[1]) / nw.clamp_min(_TINY), torch.zeros_like(nw))
        return (b[0] - b[1]) + r * curv

    zero, one = gn.new_zeros(()), gn.new_ones(())
    lo, hi = zero, one
    for _ in range(iters):
        mid = (lo + hi) / 2
        down = slope(mid) < 0
        lo, hi = torch.where(down, mid, lo), torch.where(down, hi, mid)
    t = torch.where(slope(zero) >= 0, zero, torch.where(slope(one) <= 0, one, (lo + hi) / 2))
    return torch.stack([t, 1 - t])


def solve_on(h: torch.Tensor, rhs: torch.Tensor, s: torch.Tensor,
             ridge: float = RIDGE) -> torch.Tensor:
    """x with (H_SS + ridge I) x_S = rhs_S and x = 0 off the index set ``s`` ([K] bool);
    ``rhs`` is [K] or [K, m]. Rows and columns off S are replaced by the identity."""
    k = h.shape[0]
    eye = torch.eye(k, dtype=F64, device=h.device)
    m = torch.where(s[:, None] & s[None, :], h, eye) + ridge * torch.diag(s.to(F64))
    col = rhs if rhs.dim() == 2 else rhs[:, None]
    mask = s[:, None] if rhs.dim() == 2 else s[:, None]
    x, _ = torch.linalg.solve_ex(m, torch.where(mask, col, 0))  # no error check: no sync
    x = torch.where(mask, x, 0)
    return x if rhs.dim() == 2 else x[:, 0]


def face(gn: torch.Tensor, b: torch.Tensor, r: torch.Tensor, s: torch.Tensor):
    """The dual's optimality conditions on the face S of the simplex, in closed form.

    At a dual optimum with gw != 0 every stream j in the support S gets the same gain
    p = b_j + r (G nu)_j, where nu = mu / ||gw|| (so nu^T G nu = 1). With x = G_SS^-1 1 and
    y = G_SS^-1 b_S: nu = (p x - y) / r, and nu^T G nu = 1 is the quadratic
    (1.x) p^2 - 2 (1.y) p + b.y - r^2 = 0, whose larger root is p (it makes sum(nu) > 0).
    Returns (nu, p, ok); ok is False when the face has no such point (r = 0, no real root,
    sum(nu) <= 0, a non-finite solve) or when G_SS is singular to working precision
    (RIDGE 1.x >= 1e-3: the ridge would decide nu; the face's best point then has gw = 0).
    nu may have negative entries (then S is wrong).
    """
    xy = solve_on(gn, torch.stack([torch.ones_like(b), b], 1), s)
    x, y = xy[:, 0], xy[:, 1]
    qa, qb, qc = x.sum(), y.sum(), (b * y).sum() - r * r
    disc = qb * qb - qa * qc
    root = disc.clamp_min(0).sqrt()
    # larger root (qb + root) / qa, written without cancellation
    big = qb + torch.where(qb >= 0, root, -root)
    p = torch.where(qb >= 0, big / qa, qc / torch.where(big == 0, 1.0, big))
    nu = (p * x - y) / torch.where(r > 0, r, 1.0)
    ok = (r > 0) & (disc >= 0) & (qa > 0) & (qa * RIDGE < 1e-3) & (nu.sum() > 0)
    ok = ok & torch.isfinite(nu).all()
    return nu, p, ok & torch.isfinite(p)


def inv_norm(gn: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """1 / ||gw(mu)|| from the Gram matrix (inf where gw = 0)."""
    gw_sq = mu @ gn @ mu
    return torch.where(gw_sq > _TINY, gw_sq.clamp_min(_TINY).rsqrt(), float("inf"))


def polish(gn: torch.Tensor, c: float, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Finish a dual iterate exactly: the KKT point of eq. 15 on the iterate's support S
    (:func:`face`), then active-set updates (drop the most negative nu_j from S, or add the
    stream with the lowest gain below p), ``POLISH_ROUNDS * K`` rounds at most. A KKT point
    (nu >= 0 and every gain off S at least p) is the optimum, the dual being convex, and is
    taken; other valid points replace mu only where psi does not rise.

    Returns (mu, 1 / ||gw||). For a face point, 1 / ||gw|| = sum(nu) comes from the face's
    normalisation nu^T G nu = 1, which stays accurate as gw -> 0, where sqrt(mu^T G mu), a sum
    cancelling to ~||gw||^2, loses digits (relative error ~ u / ||gw||^2)."""
    k = gn.shape[0]
    idx = torch.arange(k, device=gn.device)
    b = gn.sum(0)
    r = c * b.sum().clamp_min(0).sqrt()
    best, f_best, inv_best = mu, psi(gn, b, r, mu), inv_norm(gn, mu)
    slack = 16 * _EPS64 * (1 + f_best.abs())
    s, live = mu > 0, torch.ones((), dtype=torch.bool, device=gn.device)
    inf = torch.full_like(b, float("inf"))
    for _ in range(POLISH_ROUNDS * k):
        nu, p, ok = face(gn, b, r, s)
        ok = ok & live
        neg = s & (nu < 0)
        valid = ok & ~neg.any()
        total = torch.where(s, nu, 0).clamp_min(0).sum()
        cand = torch.where(s, nu, 0).clamp_min(0) / total.clamp_min(_TINY)
        f = psi(gn, b, r, cand)
        gains = b + r * (gn @ nu)
        viol = ~s & (gains < p - KKT_TOL * (1 + p.abs()))
        # a KKT point is the optimum, whatever psi's rounding says (near stationarity psi is
        # computed less precisely than the face solve determines mu)
        better = valid & ((f <= f_best + slack) | ~viol.any())
        best, f_best = torch.where(better, cand, best), torch.where(better, f, f_best)
        inv_best = torch.where(better, total, inv_best)
        drop, add = ok & neg.any(), valid & viol.any()
        j_drop = torch.argmin(torch.where(neg, nu, inf))
        j_add = torch.argmin(torch.where(viol, gains, inf))
        s = torch.where(drop, s & (idx != j_drop), torch.where(add, s | (idx == j_add), s))
        live = drop | add
    return best, inv_best


def nnls_tol(unit: float) -> float:
    """NNLS's working precision for a Gram of unit roundoff u, max(KKT_TOL, 16 u): it frees a
    coordinate only for a gradient above it and solves with it as the ridge, so directions the
    Gram cannot resolve (a float32 Gram of dependent rows has eigenvalues ~u, not 0) never get
    the huge coefficients that float32 then writes wrongly."""
    return max(KKT_TOL, 16 * unit)


def nnls(h: torch.Tensor, q: torch.Tensor, tol: float = KKT_TOL) -> torch.Tensor:
    """min_{x >= 0} 1/2 x^T H x + q^T x for a PSD [K, K] H: Lawson and Hanson's active-set
    method (1974) on the normal equations. Each step first, unless an earlier solve left the
    free set S's orthant, frees the coordinate with the most negative gradient (stopping when
    none is below -tol); then it solves on S (:func:`solve_on`) and takes the solution if it is
    positive, else moves to the boundary of S's orthant and drops the coordinates that reach 0
    (LH's inner loop, continued by the next steps). ``NNLS_ROUNDS * K`` steps in all, fixed, so
    it never syncs (finished steps change nothing). x stays >= 0 throughout. ``tol``: the
    gradient threshold and the ridge of the solves (:func:`nnls_tol`)."""
    k = h.shape[0]
    idx = torch.arange(k, device=h.device)
    x = torch.zeros_like(q)
    s = torch.zeros(k, dtype=torch.bool, device=h.device)
    pending = torch.zeros((), dtype=torch.bool, device=h.device)  # inside LH's inner loop
    live = torch.ones((), dtype=torch.bool, device=h.device)
    ninf, inf = torch.full_like(q, -float("inf")), torch.full_like(q, float("inf"))
    for _ in range(NNLS_ROUNDS * k):
        w = -(h @ x + q)
        cand = ~s & (w > tol)
        live = live & (pending | cand.any())
        free = live & ~pending
        s = s | (free & (idx == torch.argmax(torch.where(cand, w, ninf))))
        z = solve_on(h, -q, s, tol)
        for _ in range(NNLS_REFINE):
            z = z + solve_on(h, -q - h @ z, s, tol)
        bad = s & (z <= 0)
        fits = ~bad.any()
        gap = x - z
        ratio = torch.where(bad & (gap > 0), x / torch.where(gap > 0, gap, 1.0), inf)
        ratio = torch.where(bad & (gap <= 0), 0.0, ratio)
        stepped = x + ratio.min().clamp(0, 1) * (z - x)
        s = torch.where(live & ~fits, s & (stepped > KKT_TOL), s)
        x = torch.where(live, torch.where(fits, z, torch.where(s, stepped, 0).clamp_min(0)), x)
        pending = live & ~fits
    return x


def _write_error(gn: torch.Tensor, alpha: torch.Tensor, unit: float) -> torch.Tensor:
    """Bound on how much writing v = sum_j alpha_j g_j in a dtype of unit roundoff ``unit``
    (alpha rounded, K products summed) can change a gain g_i . v:
    K unit sum_j |alpha_j| ||g_j|| max_i ||g_i|| (Cauchy-Schwarz)."""
    norms = gn.diagonal().clamp_min(0).sqrt()
    return alpha.shape[0] * unit * (alpha.abs() @ norms) * norms.max()


def _inside(gn: torch.Tensor, delta: torch.Tensor, r: torch.Tensor, unit: float) -> torch.Tensor:
    """alpha = 1 + delta / (1 + rho) for a step v - g0 = sum_j delta_j g_j of computed length
    <= r: ||v - g0||^2 computed from G is only known to the relative error
    rho = K u (sum_j |delta_j| ||g_j||)^2 / r^2 (u: G's unit roundoff), which grows like
    1 / ||gw||^2 for eq. 14's step near stationarity; shrinking by it keeps v in the ball."""
    norms = gn.diagonal().clamp_min(0).sqrt()
    rho = delta.shape[0] * unit * (delta.abs() @ norms) ** 2 / (r * r).clamp_min(_TINY)
    return 1 + delta / (1 + rho)


def weights(gn: torch.Tensor, mu: torch.Tensor, c: float, unit: float,
            inv_gw: torch.Tensor | None = None):
    """alpha (v = sum_j alpha_j g_j) and whether the stationary candidate was chosen, from a
    trace-normalised float64 Gram and the dual solution mu (module docstring); ``inv_gw``:
    1 / ||gw(mu)|| if known more precisely than from mu (:func:`polish`)."""
    b = gn.sum(0)
    r = c * b.sum().clamp_min(0).sqrt()
    inv = inv_norm(gn, mu) if inv_gw is None else inv_gw
    alpha_a = _inside(gn, r * mu * torch.where(torch.isfinite(inv), inv, 0.0), r, unit)
    lam = nnls(gn, b, nnls_tol(unit))
    dist = (lam @ gn @ lam).clamp_min(0).sqrt()  # ||v_B - g0||
    shrink = torch.where(dist > r, r / dist.clamp_min(_TINY), torch.ones_like(dist))
    alpha_b = _inside(gn, shrink * lam, r, unit)
    low_a = (gn @ alpha_a).min() - _write_error(gn, alpha_a, unit)
    low_a = torch.where(torch.isfinite(inv), low_a, torch.full_like(low_a, -float("inf")))
    low_b = (gn @ alpha_b).min() - _write_error(gn, alpha_b, unit)
    use_b = low_b > low_a + KKT_TOL  # a tie (the same point) keeps eq. 14
    return torch.where(use_b, alpha_b, alpha_a), use_b
