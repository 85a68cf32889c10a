"""uvs: eq. 14's conflict-averse update, its properties, degenerate inputs, and every backend."""

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import BACKEND_CASES, assert_uvs_matches, interpreted
from test_solve_mu import conflicting

from csdfd import ops
from csdfd.ops import reference
from csdfd.ops.stats import NONFINITE, ZERO_G0, ZERO_GW


def primal_optimum(g: np.ndarray, c: float) -> float:
    """max_v min_j g_j . v s.t. ||v - g0|| <= c ||g0|| (eq. 11), by SLSQP over (v, t)."""
    g0 = g.sum(0)
    r2 = c * c * (g0 @ g0)
    cons = [{"type": "ineq", "fun": lambda x, j=j: g[j] @ x[:-1] - x[-1]} for j in range(len(g))]
    cons.append({"type": "ineq", "fun": lambda x: r2 - (x[:-1] - g0) @ (x[:-1] - g0)})
    x0 = np.append(g0, min(g @ g0))
    res = scipy.optimize.minimize(lambda x: -x[-1], x0, method="SLSQP", constraints=cons,
                                  options={"ftol": 1e-14, "maxiter": 1000})
    return -res.fun


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("cos", [0.8, 0.0, -0.6, -0.9])
@pytest.mark.parametrize("c", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("solver", ["pgd", "exact"])
def test_uvs_solves_the_primal(k, cos, c, solver):
    if solver == "exact" and k != 2:
        pytest.skip("exact solver is K=2 only")
    g = conflicting(k, 6, cos)
    res = reference.uvs(g, c, solver)
    g0 = g.sum(0)
    # v inside the trust region of eq. 11
    assert (res.v - g0).norm() <= c * g0.norm() * (1 + 1e-9)
    # v = sum_j alpha_j g_j
    torch.testing.assert_close(res.v, res.alpha @ g)
    # min_j g_j . v reaches the independent primal optimum
    best = primal_optimum(g.numpy(), c)
    got = float((g @ res.v).min())
    assert got >= best - 1e-5 * float(g0 @ g0)


def test_uvs_float32_matches_float64():
    g = conflicting(2, 1000, -0.5)
    r64 = reference.uvs(g)
    r32 = reference.uvs(g.float())
    scale = float(r64.v.abs().max())
    torch.testing.assert_close(r32.v.double(), r64.v, rtol=1e-4, atol=1e-4 * scale)


def test_identical_rows():
    g = torch.randn(1, 50, dtype=torch.float64).repeat(2, 1)
    res = reference.uvs(g, c=0.5)
    # gw = g for any mu: v = 2g + c * 2||g|| * g / ||g|| = (2 + 2c) g
    torch.testing.assert_close(res.v, 3.0 * g[0])
    assert res.status == 0


@pytest.mark.parametrize("rows", ["zero", "opposite"])
def test_zero_g0_gives_g0(rows):
    a = torch.randn(40, dtype=torch.float64)
    g = torch.zeros(2, 40, dtype=torch.float64) if rows == "zero" else torch.stack([a, -a])
    res = reference.uvs(g)
    assert torch.equal(res.v, g.sum(0)) and res.status == ZERO_G0
    assert torch.equal(res.alpha, torch.ones(2, dtype=torch.float64))


def test_one_zero_row_gives_g0():
    g = torch.stack([torch.randn(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)])
    res = reference.uvs(g)
    # every v in the ball is optimal (min_j g_j . v = 0); documented choice v = g0
    torch.testing.assert_close(res.v, g[0])
    assert res.status == ZERO_GW


def test_single_parameter():
    g = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    res = reference.uvs(g)
    assert torch.isfinite(res.v).all() and res.v.shape == (1,)
    assert (res.v - 1.0).abs() <= 0.5 * 1.0 + 1e-12


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gives_zero_and_flag(bad):
    g = torch.randn(2, 10)
    g[1, 3] = bad
    res = reference.uvs(g)
    assert torch.equal(res.v, torch.zeros(10)) and res.status == NONFINITE


def test_out_aliasing_first_row_matches_fresh_output():
    g = conflicting(3, 100, -0.3)
    want = reference.uvs(g.clone()).v
    buf = g.clone()
    ptr = buf.data_ptr()
    res = ops.uvs(buf, out=buf[0])
    assert res.v.data_ptr() == ptr
    torch.testing.assert_close(buf[0], want)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="K >= 2"):
        ops.uvs(torch.randn(1, 5))
    with pytest.raises(ValueError, match="2-D"):
        ops.uvs(torch.randn(5))
    with pytest.raises(TypeError, match="dtype"):
        ops.uvs(torch.randint(0, 3, (2, 5)))
    with pytest.raises(ValueError, match="out must be"):
        ops.uvs(torch.randn(2, 5), out=torch.empty(4))


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k,p", [(2, 1), (2, 7), (3, 1000), (5, 123), (2, 4099)])
def test_backends_match_reference(backend, device, dtype, k, p):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton kernels take fp32/bf16/fp16 gradients")
    g = conflicting(k, p, -0.4).to(dtype)
    got = ops.uvs(g.to(device), backend=backend)
    assert_uvs_matches(g, got.v, got.mu, got.alpha, got.gram)
    assert interpreted(backend, device) or got.status.item() == reference.uvs(g).status.item()
