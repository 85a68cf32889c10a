"""The CS-DFD gradient ops, one name in every backend.

``gram``, ``solve_mu``, ``uvs``, ``cgr`` and the whole-step ``uvs_cgr`` take a ``backend``
argument: "reference" (default, the specification), "triton", "cpp", "cuda", or "auto" (the
fastest usable one). See :mod:`csdfd.ops.dispatch` for the policy and
:mod:`csdfd.ops.stats` for the documented behaviour on degenerate input.
"""

from __future__ import annotations

import torch

from . import dispatch
from .checks import check_grads, check_out, check_split
from .dispatch import availability, backends
from .stats import STATUS_NAMES, StepStats, UVSResult, diag_size


def gram(grads: torch.Tensor, backend: str = "reference") -> torch.Tensor:
    """[K, K] Gram matrix of the K stream gradients (rows of ``grads``), accumulated in fp32+."""
    return dispatch.get(backend, grads.device).gram(grads)


def solve_mu(
    gram: torch.Tensor,
    c: float = 0.5,
    solver: str = "pgd",
    iters: int | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """mu* minimising the dual of eq. 15 on the simplex ("pgd": eq. 16; "exact": K = 2)."""
    return dispatch.get(backend, gram.device).solve_mu(gram, c, solver, iters)


def uvs(
    grads: torch.Tensor,
    c: float = 0.5,
    solver: str = "pgd",
    iters: int | None = None,
    out: torch.Tensor | None = None,
    backend: str = "reference",
) -> UVSResult:
    """Update Vector Search: v* = g0 + (c ||g0|| / ||gw||) gw (eq. 14), written into ``out``."""
    _, p = check_grads(grads)
    if out is not None:
        check_out(out, p, grads.dtype, grads.device)
    return dispatch.get(backend, grads.device).uvs(grads, c, solver, iters, out)


def cgr(
    g1: torch.Tensor,
    g2: torch.Tensor,
    tau: float = 0.01,
    out: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """Conflict Gradient Reduction for the projection layer (eq. 24)."""
    if out is not None:
        check_out(out.view(-1), g1.numel(), g1.dtype, g1.device)
    return dispatch.get(backend, g1.device).cgr(g1, g2, tau, out)


def uvs_cgr(
    buf: torch.Tensor,
    split: int,
    c: float = 0.5,
    tau: float = 0.01,
    solver: str = "pgd",
    iters: int | None = None,
    out: torch.Tensor | None = None,
    diag: torch.Tensor | None = None,
    backend: str = "reference",
) -> StepStats:
    """The whole CS-DFD gradient step on a flat [K, P] buffer (theta = [0, split), theta_p =
    [split, P)): UVS on theta, CGR on theta_p, written in place into ``out`` (default
    ``buf[0]``); diagnostics returned as device tensors, no host sync."""
    k, p = check_grads(buf)
    check_split(split, p)
    if out is not None:
        check_out(out, p, buf.dtype, buf.device)
    if diag is not None and (diag.numel() != diag_size(k) or diag.dtype != torch.float32):
        raise ValueError(f"diag must be a float32 tensor of {diag_size(k)} elements for K={k}")
    return dispatch.get(backend, buf.device).uvs_cgr(buf, split, c, tau, solver, iters, out, diag)


__all__ = [
    "STATUS_NAMES",
    "StepStats",
    "UVSResult",
    "availability",
    "backends",
    "cgr",
    "diag_size",
    "gram",
    "solve_mu",
    "uvs",
    "uvs_cgr",
]
