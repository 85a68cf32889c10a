"""cgr: eq. 24 for the projection layer, and how close it is to the exact conflict-descent
gradient."""

import pytest
import torch
from conftest import BACKEND_CASES, TOL

from csdfd import ops
from csdfd.ops import reference


def eq24(g1: torch.Tensor, g2: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 24 written out in float64."""
    g1, g2 = g1.double(), g2.double()
    gamma = tau / (g1.norm() * g2.norm())
    return g1 + g2 - gamma * (g1 * g1 * g2 + g2 * g2 * g1)


@pytest.mark.parametrize("shape", [(1,), (7,), (33, 5), (1000,)])
@pytest.mark.parametrize("tau", [0.0, 0.01, 1.0])
def test_reference_is_eq24(shape, tau):
    g1, g2 = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(reference.cgr(g1, g2, tau), eq24(g1, g2, tau))


def test_zero_norm_drops_correction():
    g1 = torch.randn(10, dtype=torch.float64)
    torch.testing.assert_close(reference.cgr(g1, torch.zeros_like(g1)), g1)


def test_nonfinite_gives_zeros():
    g1, g2 = torch.randn(10), torch.randn(10)
    g2[0] = float("nan")
    assert torch.equal(reference.cgr(g1, g2), torch.zeros(10))


def test_k_streams_is_pairwise_eq24():
    g = torch.randn(3, 20, dtype=torch.float64)
    got = reference.cgr_rows(g, 0.1)
    corr = sum(eq24(g[i], g[j], 0.1) - g[i] - g[j] for i in range(3) for j in range(i + 1, 3))
    torch.testing.assert_close(got, g.sum(0) + corr)


def test_direction_against_exact_conflict_descent_gradient():
    """Eq. 24's correction approximates the gradient of L_phi = -cos(g1p, g2p) through a diagonal
    Fisher Hessian (eqs. 18-23). Compute the exact gradient by double backward on a tiny model and
    report how well the two agree; the approximation is not expected to be equal."""
    torch.manual_seed(0)
    phi = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    x1, x2 = torch.randn(16, 8), torch.randn(16, 8) + 0.5
    y = torch.cat([torch.zeros(8), torch.ones(8)])[:, None]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    params = list(phi.parameters())
    g1 = torch.autograd.grad(bce(phi(x1), y), params, create_graph=True)
    g2 = torch.autograd.grad(bce(phi(x2), 1 - y), params, create_graph=True)
    f1, f2 = torch.cat([g.flatten() for g in g1]), torch.cat([g.flatten() for g in g2])
    loss_phi = -torch.nn.functional.cosine_similarity(f1, f2, dim=0)
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(loss_phi, params)])
    f1, f2 = f1.detach(), f2.detach()
    approx = -(f1 * f1 * f2 + f2 * f2 * f1) / (f1.norm() * f2.norm())  # eq. 24's term / tau
    cos = torch.nn.functional.cosine_similarity(exact, approx, dim=0).item()
    print(f"cosine(exact d L_phi / d theta_p, eq. 24 correction direction) = {cos:.3f}")
    assert -1.0 <= cos <= 1.0 and torch.isfinite(exact).all()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
def test_backends_match_reference(backend, device, dtype, n):
    g1, g2 = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
    want = reference.cgr(g1, g2, 0.5).float()
    got = ops.cgr(g1.to(device), g2.to(device), 0.5, backend=backend).cpu().float()
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * float(want.abs().max()))
