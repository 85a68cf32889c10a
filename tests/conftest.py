"""Shared test setup: the Triton interpreter on CPU-only machines, devices, backends, tolerances."""

import os

import torch

# Triton reads TRITON_INTERPRET when it is first imported (torch._dynamo and optimizers import it),
# so decide before anything else does: without a GPU, Triton kernels run through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from csdfd import ops  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: (backend, device) pairs that can run here; the reference is the spec, so it is checked
#: against independent float64 maths in the property tests and every other backend against it.
BACKEND_CASES = [(b, d) for d in DEVICES for b in ops.backends(d)]
FAST_CASES = [(b, d) for b, d in BACKEND_CASES if b != "reference"]

#: Per-dtype tolerances (rtol, atol relative to the scale of the values compared).
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-6),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float16: (4e-3, 2e-3),
}


def interpreted(backend: str, device: str) -> bool:
    """True when a Triton kernel would run through the (slow) CPU interpreter."""
    return backend == "triton" and device == "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def psi64(gram: torch.Tensor, mu: torch.Tensor, c: float) -> float:
    """Dual objective of eq. 15 in float64 on the host, for torch tensors."""
    from test_solve_mu import psi

    return psi(gram.detach().double().cpu().numpy(), mu.detach().double().cpu().numpy(), c)


def assert_uvs_matches(theta, got_v, got_mu, got_alpha, got_gram, c=0.5):
    """A backend's UVS agrees with the reference specification.

    mu* is only determined to about sqrt(eps) where psi is flat, so instead of comparing mu
    directly: (1) the backend's mu is as good a dual solution as the reference's, (2) its alpha is
    the reference's eq. 14 weights for that mu, and (3) its v is the reference's combination
    sum_j alpha_j g_j, to the dtype's tolerance.
    """
    from csdfd.ops import reference

    dtype = theta.dtype
    want = reference.uvs(theta.clone(), c)
    g = want.gram
    scale_g = float(g.diagonal().sum()) + 1e-30
    torch.testing.assert_close(got_gram.cpu().to(g.dtype), g, rtol=1e-4, atol=1e-5 * scale_g)
    assert psi64(g, got_mu, c) <= psi64(g, want.mu, c) + 2e-6 * abs(float(g.sum())) + 1e-30
    alpha, _ = reference.combine_weights(g, got_mu.cpu().to(g.dtype), c)
    torch.testing.assert_close(got_alpha.cpu().to(alpha.dtype), alpha, rtol=1e-4, atol=1e-5)
    v = reference._weighted_sum(theta.clone(), got_alpha.cpu().to(g.dtype), theta[0].clone())
    # alpha reported through the float32 diagnostics carries float32 rounding
    reported = torch.float32 if dtype == torch.float64 and got_alpha.dtype != dtype else dtype
    rtol, atol = TOL[reported]
    scale = float(v.abs().max().float()) + 1e-30
    torch.testing.assert_close(got_v.cpu().float(), v.float(), rtol=rtol, atol=atol * scale)
