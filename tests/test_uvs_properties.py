"""UVS against torchjd's aggregator properties (tests/unit/aggregation/_asserts.py in
TorchJD/torchjd), ported to our convention: torchjd's CAGrad averages the rows (g0 = mean), ours
sums them, so our v is K times CAGrad's output and J v / K is compared with their tolerances.

- non-conflicting: for c >= 1, J v has no negative entry (every stream gains); torchjd's own
  CAGrad passes this and csdfd failed it at Pareto-stationary matrices (it returned g0);
- for c < 1 a conflict may be optimal, so there: non-conflicting whenever the independent
  primal optimum of eq. 9 is (p* >= 0);
- permutation-invariant: permuting the rows does not change v.

Matrices follow torchjd's typical_matrices (uvs_families.typical): zero, random of every rank,
and Pareto-stationary (strong / weak) or not, with K = 20 rows where the backend allows it.
"""

import pytest
import torch
import uvs_families as fam
from conftest import BACKEND_CASES, interpreted

from csdfd import ops

MAX_K = {"cpp": 8, "cuda": 8}


def matrices(backend: str, device: str, few_large: bool = False) -> list[tuple[str, torch.Tensor]]:
    """The typical matrices a backend can take: K = 20 (torchjd's) for the reference, K = 8 for
    the compiled backends (their stream limit); the interpreted Triton kernels get a few.
    ``few_large``: one K = 20 matrix of each stationarity type only (speed)."""
    k = MAX_K.get(backend, 20)
    mats = fam.typical(8 if interpreted(backend, device) else k, min(9, k))
    if interpreted(backend, device):
        mats = [m for i, m in enumerate(mats) if i % 4 == 1]
    if few_large:
        mats = [(n, m) for n, m in mats if m.shape[0] < 20 or n.endswith("x10r5")]
    return mats


def _rows(m: torch.Tensor, backend: str, device: str) -> torch.Tensor:
    return (m.float() if backend == "triton" else m).to(device)


def assert_non_conflicting(matrix: torch.Tensor, v: torch.Tensor, strict: bool) -> None:
    """torchjd's check, in the mean convention: ||(J u)_+|| = ||J u|| for u = v / K, to
    atol = rtol = 4e-4; and, ``strict`` (float64 rows), no entry of J u below -4e-4. (Float32
    rows of a rank-deficient J leave ~1e-3 of rounding in single entries: torchjd's
    norm-based check is the one that holds there.)"""
    d = matrix.double() @ v.double().cpu() / matrix.shape[0]
    pos = d[d >= 0]
    torch.testing.assert_close(pos.norm(), d.norm(), atol=4e-4, rtol=4e-4)
    assert not strict or d.numel() == 0 or float(d.min()) >= -4e-4


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("c", [1.0, 2.0])
def test_non_conflicting(backend, device, c):
    for name, m in matrices(backend, device):
        res = ops.uvs(_rows(m, backend, device), c, backend=backend)
        assert torch.isfinite(res.v).all(), name
        assert_non_conflicting(m, res.v, strict=backend != "triton")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_non_conflicting_where_the_optimum_is(backend, device):
    """c = 0.5: conflict-free exactly when the primal optimum p* >= 0 allows it (on torchjd's
    K = 20 strongly stationary matrices it does not, on the weak and non-weak ones it may)."""
    checked = 0
    for name, m in matrices(backend, device):
        if not m.any():
            continue
        best = fam.primal(m.numpy(), 0.5)
        if best < -1e-9 * float(m.sum(0) @ m.sum(0)):
            continue
        res = ops.uvs(_rows(m, backend, device), 0.5, backend=backend)
        assert_non_conflicting(m, res.v, strict=backend != "triton")
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_permutation_invariant(backend, device):
    """torchjd's check: 5 random row permutations, atol = rtol = 1e-4 on v / K (2 for the
    interpreter)."""
    gen = torch.Generator().manual_seed(0)
    runs = 2 if interpreted(backend, device) else 5
    for name, m in matrices(backend, device, few_large=True):
        k = m.shape[0]
        v = ops.uvs(_rows(m, backend, device), 0.5, backend=backend).v.cpu().double() / k
        for _ in range(runs):
            perm = torch.randperm(k, generator=gen)
            w = ops.uvs(_rows(m[perm], backend, device), 0.5, backend=backend).v.cpu().double()
            torch.testing.assert_close(w / k, v, atol=1e-4, rtol=1e-4, msg=name)
