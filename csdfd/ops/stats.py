"""Result types of the CS-DFD ops and the layout of the per-step diagnostics tensor.

Every backend writes the same diagnostics into one small float32 device tensor so that a step
never has to read anything back to the host; the trainer looks at it only every N steps.

Layout of ``diag`` for K streams (``diag_size(K)`` floats)::

    [ gram_theta (K*K) | gram_p (K*K) | mu (K) | alpha (K) | status (1) ]

``status`` holds the bit flags below (exact small integers stored as float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# --- status bit flags (documented behaviour for degenerate inputs) -------------------------------
#: A gradient entry was inf or nan. The combined gradient is written as exact zeros, mu is the
#: uniform start and alpha is 0, so an optimizer step moves nothing through the gradient; the
#: trainer counts the event and skips the step.
NONFINITE = 1
#: ||g0|| is zero relative to the streams (all rows zero, or rows that cancel exactly): the trust
#: region of eq. 9 has radius 0, so v = g0 (alpha = 1).
ZERO_G0 = 2
#: ||gw|| is zero (or nearly so) at the dual optimum: the origin lies in the streams' convex
#: hull (Pareto-stationary: e.g. anti-parallel streams, or one zero row) and eq. 14 is 0/0. The
#: primal optima are the points of the ball with every gain g_j . v >= 0; v is the one closest
#: to g0, the projection of g0 onto {v : g_j . v >= 0} (pulled into the ball if needed), chosen
#: because its worst gain beats eq. 14's as written (csdfd.ops.solver).
ZERO_GW = 4
#: A stream's gradient on the projection layer is zero: eq. 24's gamma divides by it, the
#: correction term is dropped (gamma = 0) and the projection layer gets sum_k g_k.
ZERO_GP = 8

STATUS_NAMES = {NONFINITE: "nonfinite", ZERO_G0: "zero_g0", ZERO_GW: "zero_gw", ZERO_GP: "zero_gp"}

#: Relative thresholds below which a squared norm counts as zero, per accumulation dtype.
#: fp32 Gram entries carry ~1e-7 relative error per entry, so cancellations below ~1e-6 of the
#: trace are rounding noise; fp64 gets 1e-12.
ZERO_REL = {torch.float64: 1e-12, torch.float32: 1e-6}
#: Unit roundoff of the accumulation dtype: how finely v = sum_j alpha_j g_j is written, used to
#: weigh eq. 14's candidate against the stationary one (csdfd.ops.solver.weights).
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 input, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def diag_size(k: int) -> int:
    """Number of floats in the diagnostics tensor for K streams."""
    return 2 * k * k + 2 * k + 1


@dataclass(frozen=True)
class UVSResult:
    """Output of :func:`csdfd.ops.uvs`: v (eq. 14), the dual weights mu, the combination
    weights alpha (v = sum_j alpha_j g_j), the Gram matrix, and the status flags."""

    v: torch.Tensor
    mu: torch.Tensor
    alpha: torch.Tensor
    gram: torch.Tensor
    status: torch.Tensor


class StepStats:
    """Diagnostics of one UVS + CGR step, as views into a small device tensor.

    Nothing here synchronises with the device until a value is converted on the host
    (``float(stats.cos[0, 1])``, ``stats.to_dict()``). Cosines, norms and gamma are derived from
    the Gram matrices on demand instead of being stored twice.
    """

    def __init__(self, diag: torch.Tensor, k: int, tau: float):
        if diag.numel() != diag_size(k):
            raise ValueError(f"diag must hold {diag_size(k)} floats for K={k}, got {diag.numel()}")
        self.diag, self.k, self.tau = diag, k, tau
        kk = k * k
        self.gram = diag[:kk].view(k, k)
        self.gram_p = diag[kk : 2 * kk].view(k, k)
        self.mu = diag[2 * kk : 2 * kk + k]
        self.alpha = diag[2 * kk + k : 2 * kk + 2 * k]
        self.status = diag[2 * kk + 2 * k]

    @property
    def norms(self) -> torch.Tensor:
        """||g_k|| over the UVS parameters theta, per stream."""
        return self.gram.diagonal().clamp_min(0).sqrt()

    @property
    def norms_p(self) -> torch.Tensor:
        """||g_k|| over the projection layer theta_p, per stream."""
        return self.gram_p.diagonal().clamp_min(0).sqrt()

    @property
    def cos(self) -> torch.Tensor:
        """[K, K] cosine similarities of the streams' theta gradients (0 where a norm is 0)."""
        return _cosine(self.gram)

    @property
    def cos_p(self) -> torch.Tensor:
        """[K, K] cosine similarities over theta_p (the quantity CGR's loss, eq. 17, raises)."""
        return _cosine(self.gram_p)

    @property
    def gamma(self) -> torch.Tensor:
        """[K, K] CGR factors tau / (||g_i|| ||g_j||) (eq. 24), 0 where a norm is 0."""
        n = self.norms_p
        prod = n[:, None] * n[None, :]
        return torch.where(prod > 0, self.tau / prod.clamp_min(1e-30), torch.zeros_like(prod))

    def flags(self) -> list[str]:
        """Names of the status flags that are set (reads the device)."""
        s = int(self.status.item())
        return [name for bit, name in STATUS_NAMES.items() if s & bit]

    def to_dict(self) -> dict:
        """Host copy of the diagnostics for logging (one device read)."""
        host = StepStats(self.diag.detach().float().cpu(), self.k, self.tau)
        return {
            "mu": host.mu.tolist(),
            "alpha": host.alpha.tolist(),
            "cos": host.cos[0, 1].item() if self.k == 2 else host.cos.tolist(),
            "cos_p": host.cos_p[0, 1].item() if self.k == 2 else host.cos_p.tolist(),
            "norms": host.norms.tolist(),
            "norms_p": host.norms_p.tolist(),
            "status": int(host.status.item()),
        }


def _cosine(g: torch.Tensor) -> torch.Tensor:
    n = g.diagonal().clamp_min(0).sqrt()
    prod = n[:, None] * n[None, :]
    return torch.where(prod > 0, g / prod.clamp_min(1e-30), torch.zeros_like(g))
