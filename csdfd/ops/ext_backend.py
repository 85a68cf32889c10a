"""Backends ``"cpp"`` (CPU tensors) and ``"cuda"`` (CUDA tensors): the compiled extension csdfd._C.

Thin wrappers over the torch ops ``torch.ops.csdfd.{gram, solve_mu, uvs, cgr, uvs_cgr}``
(schemas and kernels in csrc/), with the signatures and result types of
:mod:`csdfd.ops.reference`, which is their specification. The fused step ``uvs_cgr`` makes two
passes over the flat [K, P] buffer (pass 1: both segments' Gram matrices in one read, then the
mu solve of eq. 16 on the reduced Gram; pass 2: eq. 14 over theta and eq. 24 over theta_p,
in place) and never synchronises with the host. Every op has a fake (meta) implementation, so
``torch.compile`` can trace a training step that calls it.
"""

from __future__ import annotations

import torch

from .checks import check_grads, check_mu_args, check_pair, check_solver, check_split
from .reference import EXACT_ITERS, PGD_ITERS
from .stats import StepStats, UVSResult, acc_dtype, diag_size

try:
    from .. import _C  # loading the library registers torch.ops.csdfd.*
except ImportError as exc:  # not built (CSDFD_SKIP_EXT=1, or built for another torch/Python)
    _C, _IMPORT_ERROR = None, f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = ""

_BUILD_HINT = "build it with `pip install -e . --no-build-isolation` (without CSDFD_SKIP_EXT=1)"


def unavailable_reason(name: str) -> str:
    """Why backend ``name`` ("cpp" or "cuda") cannot run here, or "" if it can."""
    if _C is None:
        return f"csdfd._C is not built or does not load ({_IMPORT_ERROR}); {_BUILD_HINT}"
    if name == "cuda" and not _C.WITH_CUDA:
        return (
            f"csdfd._C was built without CUDA ({_C.BUILD_MODE}); rebuild it with nvcc available "
            "(CUDA_HOME) and CSDFD_CPU_ONLY unset"
        )
    return ""


def _iters(solver: str, iters: int | None) -> int:
    """The reference's default iteration counts (PGD_ITERS, EXACT_ITERS) when None."""
    if iters is None:
        return EXACT_ITERS if solver == "exact" else PGD_ITERS
    return int(iters)


def _check_k(k: int, name: str) -> None:
    """The compiled engines' stream limit, checked here before anything is allocated or launched
    (csrc/ops.cpp checks it again for direct torch.ops.csdfd calls)."""
    limit = _C.MAX_STREAMS if _C is not None else 8
    if k > limit:
        raise ValueError(
            f"{name} must have 2 <= K <= {limit} rows for the cpp/cuda backends, got K={k}; "
            "use backend='reference' for more streams"
        )


def _check_step(k: int, c: float, solver: str) -> None:
    """The reference's solver checks, on a shape-only (meta) Gram: no device allocation."""
    check_mu_args(k, c, solver)


def _dense(out: torch.Tensor) -> torch.Tensor:
    """``out`` itself if the kernels can write it, else a contiguous temporary."""
    if out.is_contiguous():
        return out
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def gram(grads: torch.Tensor) -> torch.Tensor:
    """[K, K] Gram matrix, fp32 accumulation (fp64 for fp64 input); see reference.gram."""
    k, _ = check_grads(grads, allow_empty=True)
    _check_k(k, "grads")
    return torch.ops.csdfd.gram(grads)


def solve_mu(
    gram: torch.Tensor, c: float = 0.5, solver: str = "pgd", iters: int | None = None
) -> torch.Tensor:
    """mu* of the dual (eq. 15) by PGD (eq. 16) or exact K = 2 bisection; see reference.solve_mu."""
    _check_k(check_solver(gram, c, solver), "gram")
    g = gram if gram.dtype in (torch.float32, torch.float64) else gram.float()
    return torch.ops.csdfd.solve_mu(g, float(c), solver, _iters(solver, iters)).to(gram.dtype)


def uvs(
    grads: torch.Tensor,
    c: float = 0.5,
    solver: str = "pgd",
    iters: int | None = None,
    out: torch.Tensor | None = None,
) -> UVSResult:
    """v* = sum_j alpha_j g_j (eq. 14) written into ``out`` (may be ``grads[0]``); see
    reference.uvs."""
    k, _ = check_grads(grads, allow_empty=True)
    _check_k(k, "grads")
    _check_step(k, c, solver)
    target = torch.empty_like(grads[0]) if out is None else _dense(out)
    mu, alpha, g, status = torch.ops.csdfd.uvs(
        grads, float(c), solver, _iters(solver, iters), target
    )
    if out is not None and target is not out:
        out.copy_(target)
    return UVSResult(v=target if out is None else out, mu=mu, alpha=alpha, gram=g, status=status)


def cgr(
    g1: torch.Tensor, g2: torch.Tensor, tau: float = 0.01, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 24 for two streams; see reference.cgr."""
    check_pair(g1, g2)
    target = torch.empty(g1.shape, dtype=g1.dtype, device=g1.device) if out is None else _dense(out)
    torch.ops.csdfd.cgr(g1, g2, float(tau), target)
    if out is None:
        return target
    if target is not out:
        out.copy_(target)
    return out.view_as(g1)


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
    """The whole step (UVS over [0, split), CGR over [split, P)) in two passes, in place into
    ``out`` (default ``buf[0]``); diagnostics in ``diag``, no host sync. See reference.uvs_cgr."""
    k, p = check_grads(buf)
    check_split(split, p)
    _check_k(k, "buf")
    _check_step(k, c, solver)
    out = buf[0] if out is None else out
    diag = buf.new_zeros(diag_size(k), dtype=torch.float32) if diag is None else diag
    t_out, t_diag = _dense(out), _dense(diag)
    torch.ops.csdfd.uvs_cgr(buf, split, float(c), float(tau), solver, _iters(solver, iters),
                            t_out, t_diag)
    if t_out is not out:
        out.copy_(t_out)
    if t_diag is not diag:
        diag.copy_(t_diag)
    return StepStats(diag, k, tau)


def _register_fakes() -> None:
    """Shape/dtype-only implementations, so torch.compile and FakeTensor can trace the ops."""

    @torch.library.register_fake("csdfd::gram")
    def _(grads):
        k = grads.shape[0]
        return grads.new_empty((k, k), dtype=acc_dtype(grads.dtype))

    @torch.library.register_fake("csdfd::solve_mu")
    def _(gram, c, solver, iters):
        return gram.new_empty(gram.shape[:1])

    @torch.library.register_fake("csdfd::uvs")
    def _(grads, c, solver, iters, out):
        k, dtype = grads.shape[0], acc_dtype(grads.dtype)
        mu, alpha = grads.new_empty((k,), dtype=dtype), grads.new_empty((k,), dtype=dtype)
        return mu, alpha, grads.new_empty((k, k), dtype=dtype), grads.new_empty((), dtype=dtype)

    @torch.library.register_fake("csdfd::cgr")
    def _(g1, g2, tau, out):
        return None

    @torch.library.register_fake("csdfd::uvs_cgr")
    def _(buf, split, c, tau, solver, iters, out, diag):
        return None


if _C is not None:
    _register_fakes()
