"""Pure-torch reference of the CS-DFD gradient ops: the specification every backend must meet.

Paper: "Suppressing Gradient Conflict for Generalizable Deepfake Detection" (Liu et al.).
Equation numbers below are the paper's. Notation: K stream gradients g_1..g_K (rows of a [K, P]
tensor), g0 = sum_j g_j, G_ij = g_i . g_j (the Gram matrix), mu on the simplex, gw = sum_j mu_j g_j.

The K x K part (the dual solve for mu and the choice of the update at Pareto-stationary
points, all in float64) is in :mod:`csdfd.ops.solver`, which belongs to this specification.
Written for reading, not speed; it never synchronises with the device (no ``.item()``), so it
also runs inside a training step. Degenerate inputs follow the status flags in
:mod:`csdfd.ops.stats`.
"""

from __future__ import annotations

import torch

from . import solver as kk
from .checks import check_grads, check_mu_args, check_pair, check_solver, check_split
from .solver import (  # noqa: F401 - the solver's settings, re-exported as the spec's
    BACKTRACKS,
    EXACT_ITERS,
    PGD_BETA0,
    PGD_BETA_MAX,
    PGD_ITERS,
    project_simplex,
)
from .stats import (
    NONFINITE,
    ZERO_G0,
    ZERO_GP,
    ZERO_GW,
    ZERO_REL,
    UNIT_ROUNDOFF,
    StepStats,
    UVSResult,
    acc_dtype,
    diag_size,
)

_TINY = kk._TINY


def gram(grads: torch.Tensor) -> torch.Tensor:
    """[K, K] Gram matrix G_ij = g_i . g_j, accumulated in float32 (float64 for float64 input).

    Every UVS quantity depends on the gradients only through G (METHOD.md section 2), so one pass
    over the gradients is enough. Non-finite entries propagate into G (that is the true Gram);
    the solvers detect them.
    """
    check_grads(grads, allow_empty=True)
    g = grads.to(acc_dtype(grads.dtype))
    return g @ g.T


def _solve(gram: torch.Tensor, c: float, solver: str, iters: int | None):
    """(mu*, 1 / ||gw*||) in float64 (see solve_mu); the uniform start for a non-finite Gram."""
    k = check_solver(gram, c, solver)
    gn, finite = kk.normalized(gram)
    if solver == "exact":
        mu = kk.exact2(gn, c, EXACT_ITERS if iters is None else iters)
        inv = kk.inv_norm(gn, mu)
    else:
        mu, inv = kk.polish(gn, c, kk.pgd(gn, c, PGD_ITERS if iters is None else iters,
                                           PGD_BETA0))
    return torch.where(finite, mu, torch.full_like(mu, 1.0 / k)), inv


def solve_mu(
    gram: torch.Tensor,
    c: float = 0.5,
    solver: str = "pgd",
    iters: int | None = None,
) -> torch.Tensor:
    """Minimise the dual psi(mu) of eq. 15 over the simplex; returns mu* ([K], gram's dtype).

    Solved in float64 on the trace-normalised Gram matrix (:mod:`csdfd.ops.solver`).
    ``solver="pgd"``: the paper's projected gradient loop (eq. 16), ``iters`` steps (default
    64) from uniform mu with an accelerated backtracking step rule, then the exact finish on
    the iterate's support (:func:`csdfd.ops.solver.polish`). ``solver="exact"``: K = 2 only,
    bisection to machine precision. A non-finite Gram gives the uniform start.
    """
    return _solve(gram, c, solver, iters)[0].to(gram.dtype)


def combine_weights(
    gram: torch.Tensor, mu: torch.Tensor, c: float, inv_gw: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha with v = sum_j alpha_j g_j, a primal optimum of eqs. 9-10 (module docstring of
    :mod:`csdfd.ops.solver`): eq. 14's alpha_j = 1 + (c ||g0|| / ||gw||) mu_j, or, where the
    dual optimum has gw = 0 (0 in the streams' convex hull) or nearly so, the projection of g0
    onto {v : g_j . v >= 0} (status ZERO_GW). Computed in float64; returned in gram's dtype.

    ``inv_gw``: 1 / ||gw(mu)|| when the solver knows it more precisely than mu^T G mu does
    (see :func:`csdfd.ops.solver.polish`). Returns (alpha, status). ||g0|| ~ 0 -> alpha = 1
    (ZERO_G0: the ball has radius ~0); non-finite Gram -> alpha = 0 (NONFINITE). "~ 0" is
    relative to trace(G) (stats.ZERO_REL).
    """
    gn, finite = kk.normalized(gram)
    zero_g0 = finite & (gn.sum() <= ZERO_REL[acc_dtype(gram.dtype)])
    unit = UNIT_ROUNDOFF[acc_dtype(gram.dtype)]
    alpha, stationary = kk.weights(gn, mu.to(kk.F64), c, unit, inv_gw)
    zero_gw = finite & ~zero_g0 & stationary
    alpha = torch.where(zero_g0, torch.ones_like(alpha), alpha)
    alpha = torch.where(finite, alpha, torch.zeros_like(alpha))
    status = (
        torch.where(finite, 0, NONFINITE) + zero_g0 * ZERO_G0 + zero_gw * ZERO_GW
    ).to(gram.dtype)
    return alpha.to(gram.dtype), status


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
    """Update Vector Search (eqs. 6-16): a primal optimum v of eqs. 9-10, v* = g0 +
    (c ||g0|| / ||gw||) gw (eq. 14) unless the streams are (nearly) Pareto-stationary
    (see combine_weights).

    The gradients enter only through the Gram matrix (one read), the K x K dual gives mu*, and
    a second read writes v = sum_j alpha_j g_j into ``out`` (allocated when None; it may alias
    ``grads[0]``). A non-finite input gives v = 0 and status NONFINITE.
    """
    check_grads(grads, allow_empty=True)
    check_mu_args(grads.shape[0], c, solver)
    g = gram(grads)
    mu, inv_gw = _solve(g, c, solver, iters)  # float64: alpha from the unrounded mu
    alpha, status = combine_weights(g, mu, c, inv_gw)
    if out is None:
        out = torch.empty_like(grads[0])
    _weighted_sum(grads, alpha, out)
    out.masked_fill_((status.to(torch.int64) & NONFINITE) != 0, 0)  # 0 * nan is nan
    return UVSResult(v=out, mu=mu.to(g.dtype), alpha=alpha, gram=g, status=status)


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
