"""What users run today, for comparison in the benchmarks (not part of the package):

- ``foreach_step``: UVS + CGR on per-parameter gradient lists with torch._foreach ops (no flat
  buffer), the reference solver on device.
- ``naive_step``: the paper-faithful recipe as commonly written: flatten each stream with
  torch.cat, Gram on device, mu solved on the host with scipy (a device sync), combine, copy back.
- ``cagrad_recipe``: the official CAGrad recipe on a [K, P] matrix: Gram to the host, scipy
  SLSQP on the dual, combination on device (its g0 is the mean of the rows).
- ``torchjd_cagrad``: torchjd's CAGrad aggregator (optional dependency).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

from csdfd.ops import reference


def param_sizes(p: int, n: int = 400, seed: int = 0) -> list[int]:
    """Split P into n parameter tensors with a model-like spread of sizes."""
    w = np.random.default_rng(seed).lognormal(0.0, 1.5, n)
    sizes = np.maximum(1, np.floor(w / w.sum() * p)).astype(int)
    sizes[-1] += p - sizes.sum()
    return sizes.tolist()


def split_rows(buf: torch.Tensor, sizes: list[int]) -> list[list[torch.Tensor]]:
    """Per-stream lists of per-parameter views of a [K, P] buffer."""
    return [list(torch.split(buf[r], sizes)) for r in range(buf.shape[0])]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.sum() for t in torch._foreach_mul(a, b)]).sum()


def foreach_step(streams: list[list[torch.Tensor]], n_theta: int, c: float = 0.5,
                 tau: float = 0.01) -> None:
    """UVS over the first n_theta tensors, CGR over the rest; result into streams[0], in place."""
    k = len(streams)
    theta = [s[:n_theta] for s in streams]
    proj = [s[n_theta:] for s in streams]
    gram = torch.stack([torch.stack([_dot(theta[i], theta[j]) for j in range(k)])
                        for i in range(k)]).float()
    mu = reference.solve_mu(gram, c)
    alpha, _ = reference.combine_weights(gram, mu, c)
    if proj[0]:
        norms = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(p))) for p in proj]
        gamma = tau / (norms[0] * norms[1])
        a, b = proj[0], proj[1]
        corr = torch._foreach_add(torch._foreach_mul(torch._foreach_mul(a, a), b),
                                  torch._foreach_mul(torch._foreach_mul(b, b), a))
        torch._foreach_add_(a, b)
        torch._foreach_sub_(a, torch._foreach_mul(corr, gamma))
    torch._foreach_mul_(theta[0], alpha[0])
    for j in range(1, k):
        torch._foreach_add_(theta[0], torch._foreach_mul(theta[j], alpha[j]))


def host_mu(gram: np.ndarray, c: float, mean_g0: bool = False) -> np.ndarray:
    """Minimise the dual of eq. 15 with scipy SLSQP on the host (CAGrad's recipe)."""
    k = gram.shape[0]
    b = gram.mean(1) if mean_g0 else gram.sum(1)
    g0_norm = np.sqrt(max(b.sum() / (k if mean_g0 else 1), 1e-20))

    def objective(x):
        return x @ b + c * g0_norm * np.sqrt(x @ gram @ x + 1e-20)

    res = scipy.optimize.minimize(
        objective, np.full(k, 1 / k), bounds=[(0, 1)] * k, method="SLSQP",
        constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},))
    return res.x


def naive_step(grad_lists: list[list[torch.Tensor]], n_theta: int, c: float = 0.5,
               tau: float = 0.01) -> None:
    """Flatten (torch.cat), Gram on device, host solve, combine, copy back into stream 0."""
    flat = torch.stack([torch.cat([g.flatten() for g in lst]) for lst in grad_lists])
    split = sum(g.numel() for g in grad_lists[0][:n_theta])
    theta, proj = flat[:, :split], flat[:, split:]
    gram = (theta @ theta.T).double().cpu().numpy()  # host sync
    mu = host_mu(gram, c)
    g0n = np.sqrt(gram.sum())
    gwn = np.sqrt(mu @ gram @ mu)
    alpha = torch.tensor(1 + c * g0n / max(gwn, 1e-20) * mu, dtype=flat.dtype, device=flat.device)
    v = alpha @ theta
    if proj.shape[1]:
        g1, g2 = proj[0], proj[1]
        gamma = tau / (g1.norm() * g2.norm())
        v = torch.cat([v, g1 + g2 - gamma * (g1 * g1 * g2 + g2 * g2 * g1)])
    pieces = torch.split(v, [g.numel() for g in grad_lists[0]])
    for dst, src in zip(grad_lists[0], pieces, strict=True):
        dst.copy_(src.view_as(dst))


def cagrad_recipe(matrix: torch.Tensor, c: float = 0.5) -> torch.Tensor:
    """CAGrad's official recipe on a [K, P] matrix (host SLSQP); returns g (mean-based g0)."""
    gram = (matrix @ matrix.T).double().cpu().numpy()  # host sync
    w = host_mu(gram, c, mean_g0=True)
    g0_norm = np.sqrt(max(gram.mean(), 1e-20))
    ww = torch.tensor(w, dtype=matrix.dtype, device=matrix.device)
    gw = ww @ matrix
    lmbda = c * g0_norm / (gw.norm() + 1e-8)
    return matrix.mean(0) + lmbda * gw


def torchjd_cagrad(c: float = 0.5):
    """torchjd's CAGrad aggregator, or None if torchjd (with its cagrad extra) is missing."""
    try:
        from torchjd.aggregation import CAGrad
    except ImportError:
        return None
    return CAGrad(c=c)
