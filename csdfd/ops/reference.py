"""Pure-torch reference of the CS-DFD gradient ops: the specification every backend must meet.

Paper: "Suppressing Gradient Conflict for Generalizable Deepfake Detection" (Liu et al.).
Equation numbers below are the paper's. Notation: K stream gradients g_1..g_K (rows of a [K, P]
tensor), g0 = sum_j g_j, G_ij = g_i . g_j (the Gram matrix), mu on the simplex, gw = sum_j mu_j g_j.

Written for reading, not speed; it never synchronises with the device (no ``.item()``), so it
also runs inside a training step. Degenerate inputs follow the status flags in
:mod:`csdfd.ops.stats`.
"""

from __future__ import annotations

import torch

from .checks import check_grads, check_mu_args, check_pair, check_solver, check_split
from .stats import (
    NONFINITE,
    ZERO_G0,
    ZERO_GP,
    ZERO_GW,
    ZERO_REL,
    StepStats,
    UVSResult,
    acc_dtype,
    diag_size,
)

#: Defaults of the mu loop (paper eq. 16 leaves them open; see solve_mu).
PGD_ITERS = 64
PGD_BETA0 = 1.0
#: Cap on the step: on a trace-normalised Gram one step of 64 already reaches any vertex, and a
#: larger one only costs precision in the projection (fp32 kernels).
PGD_BETA_MAX = 64.0
BACKTRACKS = 16
EXACT_ITERS = 64
_TINY = 1e-30


def gram(grads: torch.Tensor) -> torch.Tensor:
    """[K, K] Gram matrix G_ij = g_i . g_j, accumulated in float32 (float64 for float64 input).

    Every UVS quantity depends on the gradients only through G (METHOD.md section 2), so one pass
    over the gradients is enough. Non-finite entries propagate into G (that is the true Gram);
    the solvers detect them.
    """
    check_grads(grads, allow_empty=True)
    g = grads.to(acc_dtype(grads.dtype))
    return g @ g.T


def _psi(gn: torch.Tensor, b: torch.Tensor, s0: torch.Tensor, c: float, mu: torch.Tensor):
    """Dual objective psi(mu) = gw . g0 + c ||g0|| ||gw|| (eq. 15) from the Gram matrix; ``mu``
    may be one point [K] or a batch of points [B, K]."""
    gw_sq = ((mu @ gn) * mu).sum(-1)
    return mu @ b + c * s0 * gw_sq.clamp_min(0).sqrt()


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``x`` ([K] or [B, K]) onto the probability simplex
    (sort-based, Held et al. 1974)."""
    u, _ = torch.sort(x, dim=-1, descending=True)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    theta_k = (torch.cumsum(u, -1) - 1) / k
    # theta* is the largest candidate threshold theta_k (they rise, peak, then fall).
    return (x - theta_k.amax(-1, keepdim=True)).clamp_min(0)


def _normalized(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite, trace-normalised copy of G (scale does not change mu*, METHOD.md section 2)
    and a flag telling whether G was finite."""
    finite = torch.isfinite(g).all()
    g = torch.where(finite, g, torch.zeros_like(g))
    tr = g.diagonal().sum()
    return g / tr.clamp_min(_TINY), finite


def _pgd(gn: torch.Tensor, c: float, iters: int, beta0: float) -> torch.Tensor:
    """Projected gradient descent on the simplex (eq. 16) on a trace-normalised Gram matrix.

    Each iteration is eq. 16's step mu+ = Proj(y - beta * dpsi/dmu(y)) with
    dpsi/dmu_j = b_j + c ||g0|| (G y)_j / ||gw(y)||, b_j = g_j . g0. Choices the paper leaves open:

    - start: uniform mu (gw = g0 / K);
    - step: backtracking on the sufficient-decrease condition
      psi(mu+) <= psi(y) + grad . d + ||d||^2 / (2 beta), d = mu+ - y (Beck and Teboulle),
      trying beta = 2 beta_prev, beta_prev, beta_prev / 2, ... (``BACKTRACKS`` candidates at
      once; the largest that passes wins), so the step follows the local curvature
      c ||g0|| / ||gw||, which no fixed beta fits; capped at ``PGD_BETA_MAX``;
    - y: Nesterov extrapolation (FISTA) with a restart whenever psi goes up (O'Donoghue and
      Candes), so the iterates are monotone and converge as O(1/t^2) for any K.

    64 iterations reach the optimum to ~1e-15 of ||g0||^2 in float64 and to float32 rounding in
    float32 over the test families (tests/test_solve_mu.py). If no step passes (a kink at
    gw = 0), mu stays put.
    """
    k = gn.shape[0]
    b = gn.sum(0)  # b_j = g_j . g0
    s0 = b.sum().clamp_min(0).sqrt()  # ||g0||
    mu = torch.full((k,), 1.0 / k, dtype=gn.dtype, device=gn.device)
    f_mu = _psi(gn, b, s0, c, mu)
    y, t = mu, gn.new_tensor(1.0)
    beta = gn.new_tensor(beta0)
    ladder = 2.0 ** (1 - torch.arange(BACKTRACKS, dtype=gn.dtype, device=gn.device))
    slack = 16 * torch.finfo(gn.dtype).eps * (b.sum() + 1)
    for _ in range(iters):
        gy = gn @ y
        nw = (y @ gy).clamp_min(0).sqrt()  # ||gw(y)||
        grad = b + c * s0 * gy / nw.clamp_min(_TINY)
        f_y = _psi(gn, b, s0, c, y)
        betas = beta * ladder  # [B] candidate steps, largest first
        cand = project_simplex(y - betas[:, None] * grad)  # [B, K]
        d = cand - y
        f_cand = _psi(gn, b, s0, c, cand)
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


def _exact2(gn: torch.Tensor, c: float, iters: int) -> torch.Tensor:
    """Exact K = 2 dual solution: psi(t) with mu = (t, 1 - t) is convex on [0, 1], so bisection
    on the sign of dpsi/dt = (b_0 - b_1) + c ||g0|| ((G mu)_0 - (G mu)_1) / ||gw|| finds the
    minimiser to machine precision (64 halvings). At a kink (||gw|| = 0) the second term is 0."""
    b = gn.sum(0)
    s0 = b.sum().clamp_min(0).sqrt()

    def slope(t: torch.Tensor) -> torch.Tensor:
        mu = torch.stack([t, 1 - t])
        gmu = gn @ mu
        nw = (mu @ gmu).clamp_min(0).sqrt()
        curv = torch.where(nw > 0, (gmu[0] - gmu[1]) / nw.clamp_min(_TINY), torch.zeros_like(nw))
        return (b[0] - b[1]) + c * s0 * curv

    zero, one = gn.new_zeros(()), gn.new_ones(())
    lo, hi = zero, one
    for _ in range(iters):
        mid = (lo + hi) / 2
        down = slope(mid) < 0
        lo, hi = torch.where(down, mid, lo), torch.where(down, hi, mid)
    t = torch.where(slope(zero) >= 0, zero, torch.where(slope(one) <= 0, one, (lo + hi) / 2))
    return torch.stack([t, 1 - t])


def solve_mu(
    gram: torch.Tensor,
    c: float = 0.5,
    solver: str = "pgd",
    iters: int | None = None,
    beta0: float = PGD_BETA0,
) -> torch.Tensor:
    """Minimise the dual psi(mu) of eq. 15 over the simplex; returns mu* ([K]).

    ``solver="pgd"``: the paper's projected gradient loop (eq. 16), ``iters`` steps (default
    64) from uniform mu with the accelerated backtracking step rule of :func:`_pgd`, initial
    step ``beta0`` on the trace-normalised Gram matrix. ``solver="exact"``: K = 2 only,
    bisection to machine precision. A non-finite Gram gives the uniform start.
    """
    k = check_solver(gram, c, solver)
    gn, finite = _normalized(gram)
    if solver == "exact":
        mu = _exact2(gn, c, EXACT_ITERS if iters is None else iters)
    else:
        mu = _pgd(gn, c, PGD_ITERS if iters is None else iters, beta0)
    return torch.where(finite, mu, torch.full_like(mu, 1.0 / k))


def combine_weights(
    gram: torch.Tensor, mu: torch.Tensor, c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha with v* = sum_j alpha_j g_j (eq. 14): alpha_j = 1 + (c ||g0|| / ||gw||) mu_j.

    Returns (alpha, status). ||g0|| ~ 0 -> alpha = 1 (ZERO_G0); ||gw|| ~ 0 -> alpha = 1
    (ZERO_GW); non-finite Gram -> alpha = 0 (NONFINITE). "~ 0" is relative to trace(G).
    """
    finite = torch.isfinite(gram).all()
    g = torch.where(finite, gram, torch.zeros_like(gram))
    rel = ZERO_REL[acc_dtype(gram.dtype)]
    tr = g.diagonal().sum()
    g0_sq, gw_sq = g.sum(), mu @ g @ mu
    zero_g0 = finite & (g0_sq <= rel * tr)
    zero_gw = finite & ~zero_g0 & (gw_sq <= rel * tr)
    scale = c * g0_sq.clamp_min(0).sqrt() / gw_sq.clamp_min(_TINY).sqrt()
    alpha = 1 + scale * mu
    alpha = torch.where(zero_g0 | zero_gw, torch.ones_like(alpha), alpha)
    alpha = torch.where(finite, alpha, torch.zeros_like(alpha))
    status = (
        torch.where(finite, 0, NONFINITE) + zero_g0 * ZERO_G0 + zero_gw * ZERO_GW
    ).to(gram.dtype)
    return alpha, status


def _weighted_sum(rows: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = sum_j weights_j rows_j, in place (out may alias rows[0]); no [P] temporary."""
    w = weights.to(out.dtype) if out.dtype == torch.float64 else weights
    torch.mul(rows[0], w[0], out=out)
    for j in range(1, rows.shape[0]):
        out.addcmul_(rows[j], w[j])
    return out


def uvs(
    grads: torch.Tensor,
    c: float = 0.5,
    solver: str = "pgd",
    iters: int | None = None,
    out: torch.Tensor | None = None,
) -> UVSResult:
    """Update Vector Search (eqs. 6-16): v* = g0 + (c ||g0|| / ||gw||) gw (eq. 14).

    The gradients enter only through the Gram matrix (one read), the scalar dual gives mu*, and
    a second read writes v* = sum_j alpha_j g_j into ``out`` (allocated when None; it may alias
    ``grads[0]``). A non-finite input gives v = 0 and status NONFINITE.
    """
    check_grads(grads, allow_empty=True)
    check_mu_args(grads.shape[0], c, solver)
    g = gram(grads)
    mu = solve_mu(g, c, solver, iters)
    alpha, status = combine_weights(g, mu, c)
    if out is None:
        out = torch.empty_like(grads[0])
    _weighted_sum(grads, alpha, out)
    out.masked_fill_((status.to(torch.int64) & NONFINITE) != 0, 0)  # 0 * nan is nan
    return UVSResult(v=out, mu=mu, alpha=alpha, gram=g, status=status)


def cgr_rows(gp: torch.Tensor, tau: float = 0.01, out: torch.Tensor | None = None) -> torch.Tensor:
    """CGR gradient for the projection layer theta_p from K stream gradients (eq. 24).

    grad = sum_k g_k - sum_{i<j} gamma_ij (g_i . g_i . g_j + g_j . g_j . g_i) (element-wise),
    gamma_ij = tau / (||g_i|| ||g_j||). For K = 2 this is exactly eq. 24; for K > 2 it is the
    same Fisher-diagonal approximation applied to L_phi = -sum_{i<j} cos(g_i, g_j). A zero norm
    drops its pairs (gamma = 0); a non-finite input gives zeros.
    """
    check_grads(gp, allow_empty=True)
    acc = gp.to(acc_dtype(gp.dtype))
    norms = acc.pow(2).sum(1).sqrt()
    result = acc.sum(0)
    k = gp.shape[0]
    for i in range(k):
        for j in range(i + 1, k):
            prod = norms[i] * norms[j]
            gamma = torch.where(prod > 0, tau / prod.clamp_min(_TINY), torch.zeros_like(prod))
            result -= gamma * acc[i] * acc[j] * (acc[i] + acc[j])
    result = torch.where(torch.isfinite(acc).all(), result, torch.zeros_like(result))
    if out is None:
        return result.to(gp.dtype)
    return out.copy_(result)


def cgr(
    g1: torch.Tensor, g2: torch.Tensor, tau: float = 0.01, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Conflict Gradient Reduction for two streams, eq. 24:
    g1 + g2 - tau / (||g1|| ||g2||) * (g1 . g1 . g2 + g2 . g2 . g1)."""
    check_pair(g1, g2)
    return cgr_rows(torch.stack([g1.reshape(-1), g2.reshape(-1)]), tau, out).view_as(g1)


def uvs_cgr(
    buf: torch.Tensor,
    split: int,
    c: float = 0.5,
    tau: float = 0.01,
    solver: str = "pgd",
    iters: int | None = None,
    out: torch.Tensor | None = None,
    diag: torch.Tensor | None = None,
) -> StepStats:
    """One CS-DFD gradient step (Algorithm 1, lines 3-4) on the flat [K, P] buffer.

    Columns [0, split) are the UVS parameters theta, [split, P) the projection layer theta_p.
    Writes v* (eq. 14) over theta and the CGR gradient (eq. 24) over theta_p into ``out``
    (default ``buf[0]``, i.e. in place) and returns the diagnostics without a host sync.
    A non-finite entry anywhere makes the whole output zero and sets NONFINITE.
    """
    k, p = check_grads(buf)
    check_split(split, p)
    out = buf[0] if out is None else out
    diag = buf.new_zeros(diag_size(k), dtype=torch.float32) if diag is None else diag
    stats = StepStats(diag, k, tau)
    theta, theta_p = buf[:, :split], buf[:, split:]
    res = uvs(theta, c, solver, iters, out=out[:split])
    g_p = gram(theta_p)
    cgr_rows(theta_p, tau, out=out[split:])
    finite = torch.isfinite(res.gram).all() & torch.isfinite(g_p).all()
    out.masked_fill_(~finite, 0)  # one non-finite segment zeroes the whole step
    n_p = g_p.diagonal()
    zero_gp = (n_p <= 0).any() & finite & (split < p)
    status = torch.where(finite, res.status.float(), NONFINITE) + zero_gp * ZERO_GP
    stats.gram.copy_(res.gram)
    stats.gram_p.copy_(g_p)
    stats.mu.copy_(torch.where(finite, res.mu, torch.full_like(res.mu, 1.0 / k)))
    stats.alpha.copy_(torch.where(finite, res.alpha, torch.zeros_like(res.alpha)))
    stats.status.copy_(status)
    return stats
