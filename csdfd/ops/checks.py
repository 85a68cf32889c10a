"""Input checks shared by every backend, so all of them reject bad input with the same message."""

from __future__ import annotations

import torch

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
SOLVERS = ("pgd", "exact")


def check_grads(grads: torch.Tensor, allow_empty: bool = False) -> tuple[int, int]:
    """Validate a [K, P] stream-gradient tensor; returns (K, P)."""
    if not isinstance(grads, torch.Tensor):
        raise TypeError(f"grads must be a torch.Tensor of shape [K, P], got {type(grads).__name__}")
    if grads.dim() != 2:
        raise ValueError(
            f"grads must be 2-D [K streams, P parameters], got shape {tuple(grads.shape)}; "
            "flatten each stream's gradient into one row (see csdfd.FlatGrads)"
        )
    k, p = grads.shape
    if k < 2:
        raise ValueError(f"grads needs K >= 2 streams (rows), got K={k}")
    if p == 0 and not allow_empty:
        raise ValueError("grads has P=0 parameters; pass at least one column")
    if grads.dtype not in DTYPES:
        raise TypeError(f"grads dtype must be one of {[str(d) for d in DTYPES]}, got {grads.dtype}")
    return k, p


def check_pair(g1: torch.Tensor, g2: torch.Tensor) -> None:
    """Validate the two stream gradients of the projection layer (eq. 24)."""
    if g1.shape != g2.shape or g1.dtype != g2.dtype or g1.device != g2.device:
        raise ValueError(
            "g1 and g2 must share shape, dtype and device, got "
            f"{tuple(g1.shape)}/{g1.dtype}/{g1.device} and {tuple(g2.shape)}/{g2.dtype}/{g2.device}"
        )


def check_solver(gram: torch.Tensor, c: float, solver: str) -> int:
    """Validate a [K, K] Gram matrix, the trust-region size c (eq. 9) and the solver name."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 2:
        raise ValueError(
            f"gram must be a square [K, K] matrix with K >= 2, got {tuple(gram.shape)}"
        )
    check_mu_args(gram.shape[0], c, solver)
    return gram.shape[0]


def check_mu_args(k: int, c: float, solver: str) -> None:
    """Validate the trust-region size c (eq. 9) and the solver name for K streams."""
    if not c >= 0:
        raise ValueError(f"c must be non-negative, but got {c}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "exact" and k != 2:
        raise ValueError(f"solver='exact' solves K=2 only, got K={k}; use solver='pgd' for K > 2")


def check_split(split: int, p: int) -> None:
    """Validate the column where the projection-layer segment theta_p starts."""
    if not 0 <= split <= p:
        raise ValueError(f"split must lie in [0, P={p}] (theta is [0, split)), got {split}")


def check_out(out: torch.Tensor, p: int, dtype: torch.dtype, device: torch.device) -> None:
    """Validate an output vector for a P-column result."""
    if out.shape != (p,) or out.dtype != dtype or out.device != device:
        raise ValueError(
            f"out must be a [{p}] {dtype} tensor on {device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
