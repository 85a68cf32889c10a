"""Throughput of the whole UVS + CGR step (uvs_cgr) for every backend and the peers.

Bytes that must move per step for K rows of b-byte gradients: pass 1 reads K P b, pass 2 reads
K P b and writes P b: (2K + 1) P b (20 bytes per parameter for K = 2 in float32). The copy row
is the ceiling: a device copy of the same K P b bytes (read + write = 2 K P b).
"""

import pytest
import torch
from conftest import DEVICE, measure, sizes
from peers import cagrad_recipe, foreach_step, naive_step, param_sizes, split_rows, torchjd_cagrad

from csdfd import ops

K = 2
THETA_P = 0.05  # share of parameters in the projection layer theta_p
FUSED = [b for b in ops.backends(DEVICE) if b != "reference"
         and not (b == "triton" and DEVICE == "cpu")]
INTERP = ["triton"] if DEVICE == "cpu" and "triton" in ops.backends("cpu") else []


def make(p: int, dtype=torch.float32):
    torch.manual_seed(0)
    buf = torch.randn(K, p, dtype=dtype, device=DEVICE)
    buf[1] -= 0.6 * buf[0]  # conflicting streams
    return buf, int(p * (1 - THETA_P))


def inner_for(p: int) -> int:
    return max(1, min(50, int(2e8 // p))) if DEVICE == "cuda" else 1


def rounds_for(p: int) -> int:
    return 10 if DEVICE == "cuda" else (3 if p <= 5_000_000 else 2)


@pytest.mark.parametrize("p", sizes())
def test_copy(benchmark, p):
    src = torch.randn(K, p, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), inner_for(p), rounds_for(p),
           op="uvs_cgr", impl="copy", K=K, P=p, dtype="float32", bytes=2 * K * p * 4)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", sizes())
def test_fused(benchmark, backend, dtype, p):
    buf, split = make(p, dtype)
    out = torch.empty_like(buf[0])
    diag = torch.zeros(ops.diag_size(K), device=DEVICE)
    fn = lambda: ops.uvs_cgr(buf, split, out=out, diag=diag, backend=backend)  # noqa: E731
    b = buf.element_size()
    measure(benchmark, fn, inner_for(p), rounds_for(p), op="uvs_cgr", impl=backend, K=K, P=p,
           dtype=str(dtype).replace("torch.", ""), bytes=(2 * K + 1) * p * b)


@pytest.mark.parametrize("backend", INTERP)
def test_triton_interpreter(benchmark, backend):
    """Runs the Triton kernels through the CPU interpreter: a smoke row, not a speed figure."""
    p = 100_000
    buf, split = make(p)
    out = torch.empty_like(buf[0])
    measure(benchmark, lambda: ops.uvs_cgr(buf, split, out=out, backend=backend), 1, 2,
           op="uvs_cgr", impl="triton (interpreter)", K=K, P=p, dtype="float32",
           bytes=(2 * K + 1) * p * 4)


def per_parameter(p: int):
    """The buffer as per-stream lists of per-parameter tensors, and how many belong to theta."""
    buf, split = make(p)
    sizes_ = param_sizes(p)
    n_theta = next(i for i in range(len(sizes_)) if sum(sizes_[: i + 1]) >= split)
    return split_rows(buf, sizes_), n_theta


@pytest.mark.parametrize("p", sizes())
def test_foreach(benchmark, p):
    streams, n_theta = per_parameter(p)
    measure(benchmark, lambda: foreach_step(streams, n_theta), inner_for(p) // 5 or 1,
           rounds_for(p), op="uvs_cgr", impl="foreach", K=K, P=p, dtype="float32",
           bytes=(2 * K + 1) * p * 4)


@pytest.mark.parametrize("p", sizes())
def test_naive_host_solver(benchmark, p):
    lists, n_theta = per_parameter(p)
    measure(benchmark, lambda: naive_step(lists, n_theta), 1, rounds_for(p), op="uvs_cgr",
           impl="naive (cat + host scipy)", K=K, P=p, dtype="float32", bytes=(2 * K + 1) * p * 4)


@pytest.mark.parametrize("p", sizes())
def test_cagrad_recipe(benchmark, p):
    buf, _ = make(p)
    ours = ops.uvs(buf, backend="reference").v
    theirs = cagrad_recipe(buf)
    cos = torch.nn.functional.cosine_similarity(ours.double(), theirs.double(), dim=0).item()
    # SLSQP's default tolerances are absolute, so on large, unnormalised Gram matrices the
    # recipe's host solve stops early (cosine ~0.984 at P >= 1M on an H100): recorded, not hidden.
    assert cos > 0.95, f"CAGrad recipe disagrees with UVS (cosine {cos})"
    measure(benchmark, lambda: cagrad_recipe(buf), 1, rounds_for(p), op="uvs_cgr",
           impl="CAGrad recipe (host scipy)", K=K, P=p, dtype="float32",
           bytes=(2 * K + 1) * p * 4, cosine_vs_ours=cos)


@pytest.mark.parametrize("p", sizes())
def test_torchjd_cagrad(benchmark, p):
    agg = torchjd_cagrad()
    if agg is None:
        pytest.skip("torchjd[cagrad] not installed (pip install 'csdfd[bench]')")
    buf, _ = make(p)
    ours = ops.uvs(buf, backend="reference").v
    theirs = agg(buf)
    # torchjd's g0 is the mean of the rows: same direction as ours, K times smaller
    rel = ((ours - K * theirs).norm() / ours.norm()).item()
    assert rel < 1e-2, f"torchjd CAGrad x K differs from UVS by {rel:.2e} (relative)"
    measure(benchmark, lambda: agg(buf), 1, rounds_for(p), op="uvs_cgr", impl="torchjd CAGrad",
           K=K, P=p, dtype="float32", bytes=(2 * K + 1) * p * 4, rel_diff_vs_ours=rel)
