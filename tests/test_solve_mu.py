"""solve_mu: the dual of eq. 15 on the simplex, "pgd" (eq. 16) and "exact" (K = 2)."""

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import BACKEND_CASES

from csdfd import ops
from csdfd.ops import reference


def psi(gram: np.ndarray, mu: np.ndarray, c: float) -> float:
    """Dual objective of eq. 15 computed independently in numpy float64."""
    g0_norm = np.sqrt(max(gram.sum(), 0.0))
    return float(mu @ gram.sum(0) + c * g0_norm * np.sqrt(max(mu @ gram @ mu, 0.0)))


def brute_force_mu(gram: np.ndarray, c: float) -> float:
    """Best psi over the simplex by SLSQP from several starts (independent of our solvers)."""
    k = gram.shape[0]
    best = np.inf
    rng = np.random.default_rng(0)
    starts = [np.full(k, 1 / k)] + list(np.eye(k)) + list(rng.dirichlet(np.ones(k), 8))
    for x0 in starts:
        res = scipy.optimize.minimize(
            lambda m: psi(gram, m, c), x0, method="SLSQP", bounds=[(0, 1)] * k,
            constraints=[{"type": "eq", "fun": lambda m: m.sum() - 1}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        if res.success or res.status == 8:
            m = np.clip(res.x, 0, None)
            best = min(best, psi(gram, m / m.sum(), c))
    return best


def conflicting(k: int, p: int, cos: float) -> torch.Tensor:
    """K float64 rows with pairwise cosine around ``cos`` and different norms."""
    base = torch.randn(p, dtype=torch.float64)
    rows = [base * cos + torch.randn(p, dtype=torch.float64) * (1 - abs(cos)) for _ in range(k)]
    rows[1] = -rows[1] if cos < 0 else rows[1]
    scale = torch.logspace(0, 1, k, dtype=torch.float64)
    return torch.stack(rows) * scale[:, None]


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("cos", [0.9, 0.0, -0.5, -0.95])
@pytest.mark.parametrize("c", [0.1, 0.5, 1.0])
def test_pgd_reaches_brute_force_optimum(k, cos, c):
    g = conflicting(k, 16, cos)
    gram = (g @ g.T).numpy()
    mu = reference.solve_mu(torch.from_numpy(gram), c, "pgd").numpy()
    assert mu.min() >= 0 and abs(mu.sum() - 1) < 1e-12
    target = brute_force_mu(gram, c)
    # Stated tolerance: within 1e-5 of the objective's scale ||g0||^2 after 100 iterations.
    assert psi(gram, mu, c) <= target + 1e-5 * gram.sum()


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("c", [0.0, 0.5, 2.0])
def test_pgd_matches_exact_for_two_streams(seed, c):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2, 32, dtype=torch.float64, generator=gen)
    g[1] = g[1] * (0.1 + 3 * torch.rand((), generator=gen, dtype=torch.float64)) - g[0] * seed / 10
    gram = g @ g.T
    exact = reference.solve_mu(gram, c, "exact")
    pgd = reference.solve_mu(gram, c, "pgd")
    f_exact, f_pgd = psi(gram.numpy(), exact.numpy(), c), psi(gram.numpy(), pgd.numpy(), c)
    scale = float(gram.sum())
    assert f_exact <= brute_force_mu(gram.numpy(), c) + 1e-10 * scale  # exact is exact
    assert f_pgd <= f_exact + 1e-6 * scale  # pgd reaches the exact objective to 1e-6 * ||g0||^2


def test_mu_is_scale_invariant():
    g = conflicting(3, 10, -0.3)
    gram = g @ g.T
    for solver_scale in (1e-8, 1.0, 1e6):
        mu = reference.solve_mu(gram * solver_scale, 0.5)
        torch.testing.assert_close(mu, reference.solve_mu(gram, 0.5), rtol=1e-9, atol=1e-12)


def test_nonfinite_gram_gives_uniform_mu():
    gram = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]])
    assert torch.equal(reference.solve_mu(gram), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("bad", [
    dict(gram=torch.eye(3), solver="exact", match="K=2"),
    dict(gram=torch.eye(2), solver="newton", match="solver"),
    dict(gram=torch.eye(2), c=-1.0, match="non-negative"),
    dict(gram=torch.ones(2, 3), match="square"),
])
def test_bad_arguments(bad):
    match = bad.pop("match")
    with pytest.raises(ValueError, match=match):
        ops.solve_mu(**bad)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("solver,k", [("pgd", 2), ("pgd", 3), ("pgd", 5), ("exact", 2)])
def test_backends_match_reference(backend, device, solver, k):
    g = conflicting(k, 12, -0.4).float().to(device)
    gram = g @ g.T
    want = reference.solve_mu(gram.cpu(), 0.5, solver)
    got = ops.solve_mu(gram, 0.5, solver, backend=backend).cpu()
    f_want = psi(gram.cpu().double().numpy(), want.double().numpy(), 0.5)
    f_got = psi(gram.cpu().double().numpy(), got.double().numpy(), 0.5)
    assert abs(f_got - f_want) <= 1e-4 * float(gram.sum().abs())
