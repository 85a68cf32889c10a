"""Backend "triton": the ops on top of the two-pass kernels in ``kernels/`` (csdfd.kernels).

gram runs pass 1 alone (it also solves, which costs microseconds); uvs is the whole step with an
empty theta_p; cgr stacks its two inputs (a [2, n] copy: the whole-step op avoids it) and runs the
step with an empty theta. The solver settings are the reference's, so results agree to rounding.
"""

from __future__ import annotations

import torch

from . import reference as ref
from .checks import check_grads, check_mu_args, check_pair, check_solver, check_split
from .stats import ZERO_REL, StepStats, UVSResult, diag_size

MIN_TRITON = (3, 3)


def unavailable_reason(_name: str) -> str:
    """Why this backend cannot run at all ("" if it can)."""
    try:
        import triton
    except ImportError as exc:
        return f"triton is not installed ({exc}); pip install 'triton>=3.3'"
    version = tuple(int(x) for x in triton.__version__.split(".")[:2])
    if version < MIN_TRITON:
        return f"triton {triton.__version__} is too old; need >= 3.3"
    return ""


def _kernels():
    from csdfd.kernels import solve_mu as ksolve
    from csdfd.kernels import uvs_cgr as kstep

    return ksolve, kstep


def _check_buffer(buf: torch.Tensor) -> None:
    if buf.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(
            f"backend 'triton' takes float32/bfloat16/float16 gradients, got {buf.dtype}; "
            "use backend='reference' (or 'cpp') for float64"
        )
    if buf.stride(1) != 1:
        raise ValueError("backend 'triton' needs row-contiguous [K, P] gradients (stride(1) == 1)")


def _solver_args(c: float, tau: float, solver: str, iters: int | None) -> dict:
    default = ref.EXACT_ITERS if solver == "exact" else ref.PGD_ITERS
    return dict(c=c, tau=tau, solver=solver, iters=default if iters is None else iters,
                beta0=ref.PGD_BETA0, beta_max=ref.PGD_BETA_MAX, backtracks=ref.BACKTRACKS,
                rel=ZERO_REL[torch.float32])


def _step(buf, split, c, tau, solver, iters, out, diag, gram_only=False) -> StepStats:
    k, p = check_grads(buf, allow_empty=True)
    check_mu_args(k, c, solver)  # validated without touching the device
    check_split(split, p)
    _check_buffer(buf)
    _, kstep = _kernels()
    if diag is None:
        diag = torch.empty(diag_size(k), dtype=torch.float32, device=buf.device)
    args = _solver_args(c, tau, solver, iters)
    if gram_only:
        kstep.gram_pass(buf, split, diag, **args)
    else:
        kstep.uvs_cgr(buf, split, buf[0] if out is None else out, diag, **args)
    return StepStats(diag, k, tau)


def gram(grads: torch.Tensor) -> torch.Tensor:
    """[K, K] float32 Gram matrix from pass 1."""
    grads = grads if grads.stride(-1) == 1 else grads.contiguous()
    return _step(grads, grads.shape[1], 0.5, 0.0, "pgd", 0, None, None, gram_only=True).gram.clone()


def solve_mu(gram: torch.Tensor, c: float = 0.5, solver: str = "pgd",
             iters: int | None = None) -> torch.Tensor:
    """mu* from the on-device solver of pass 1, on a given Gram matrix (one program)."""
    check_solver(gram, c, solver)
    ksolve, _ = _kernels()
    a = _solver_args(c, 0.0, solver, iters)
    return ksolve.solve_mu(gram, c, solver, a["iters"], a["beta0"], a["beta_max"],
                           a["backtracks"], a["rel"])


def uvs(grads: torch.Tensor, c: float = 0.5, solver: str = "pgd", iters: int | None = None,
        out: torch.Tensor | None = None) -> UVSResult:
    """Eq. 14 via the whole step with an empty theta_p segment."""
    grads = grads if grads.stride(-1) == 1 else grads.contiguous()
    out = torch.empty_like(grads[0]) if out is None else out
    stats = _step(grads, grads.shape[1], c, 0.0, solver, iters, out, None)
    return UVSResult(v=out, mu=stats.mu, alpha=stats.alpha, gram=stats.gram,
                     status=stats.status)


def cgr(g1: torch.Tensor, g2: torch.Tensor, tau: float = 0.01,
        out: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 24 via the whole step with an empty theta segment."""
    check_pair(g1, g2)
    buf = torch.stack([g1.reshape(-1), g2.reshape(-1)])
    flat = torch.empty_like(buf[0]) if out is None else out.view(-1)
    _step(buf, 0, 0.5, tau, "pgd", 0, flat, None)
    return flat.view_as(g1) if out is None else out


def uvs_cgr(buf: torch.Tensor, split: int, c: float = 0.5, tau: float = 0.01,
            solver: str = "pgd", iters: int | None = None, out: torch.Tensor | None = None,
            diag: torch.Tensor | None = None) -> StepStats:
    """The whole step: pass 1 (Gram + on-device solve), pass 2 (eq. 14 + eq. 24, in place)."""
    return _step(buf, split, c, tau, solver, iters, out, diag)
