"""uvs_cgr: the whole-step op (UVS on theta, CGR on theta_p, in place) for every backend."""

import pytest
import torch
from conftest import BACKEND_CASES, TOL, assert_uvs_matches, interpreted
from test_solve_mu import conflicting

from csdfd import ops
from csdfd.ops import reference
from csdfd.ops.stats import NONFINITE, ZERO_G0, ZERO_GP, StepStats, diag_size

SHAPES = [(2, 1, 0), (2, 7, 5), (2, 1000, 1000), (3, 1000, 900), (5, 4097, 4000),
          (2, 100_003, 99_001), (3, 1000, 1)]


def make_buf(k: int, p: int, dtype: torch.dtype) -> torch.Tensor:
    return conflicting(k, p, -0.3).to(dtype)


def test_reference_is_uvs_then_cgr():
    buf = make_buf(2, 300, torch.float64)
    split = 200
    g = reference.gram(buf[:, :split])
    v = reference.uvs(buf[:, :split].clone()).v
    p = reference.cgr(buf[0, split:], buf[1, split:])
    stats = reference.uvs_cgr(buf, split)
    torch.testing.assert_close(buf[0], torch.cat([v, p]))
    torch.testing.assert_close(stats.gram, g.float())
    assert isinstance(stats, StepStats) and stats.diag.numel() == diag_size(2)


def test_empty_theta_p_is_plain_uvs():
    buf = make_buf(3, 50, torch.float64)
    want = reference.uvs(buf.clone()).v
    stats = reference.uvs_cgr(buf, 50)
    torch.testing.assert_close(buf[0], want)
    assert stats.status.item() == 0  # an empty theta_p segment is not a degenerate one


@pytest.mark.parametrize("where", ["theta", "theta_p"])
def test_nonfinite_anywhere_zeroes_the_step(where):
    buf = make_buf(2, 100, torch.float32)
    buf[1, 10 if where == "theta" else 90] = float("inf")
    stats = reference.uvs_cgr(buf, 80)
    assert torch.equal(buf[0], torch.zeros(100)) and stats.status.item() == NONFINITE
    assert torch.equal(stats.alpha, torch.zeros(2))


def test_zero_theta_p_stream_flags_and_sums():
    buf = make_buf(2, 100, torch.float64)
    buf[1, 80:] = 0
    want_p = buf[0, 80:].clone()
    stats = reference.uvs_cgr(buf, 80)
    torch.testing.assert_close(buf[0, 80:], want_p)
    assert int(stats.status.item()) & ZERO_GP


def test_all_zero_buffer_is_finite():
    buf = torch.zeros(2, 64)
    stats = reference.uvs_cgr(buf, 32)
    assert torch.equal(buf[0], torch.zeros(64))
    assert int(stats.status.item()) & ZERO_G0


def padded_like(buf: torch.Tensor, device, row_bytes: int = 64) -> torch.Tensor:
    """A copy of ``buf`` on ``device`` whose rows start on ``row_bytes`` boundaries, as in
    FlatGrads (the layout that gets the kernels' vectorised variant)."""
    k, p = buf.shape
    per = row_bytes // buf.element_size()
    full = torch.zeros(k, -(-p // per) * per + per, dtype=buf.dtype, device=device)
    full[:, :p] = buf.to(device)
    return full[:, :p]


def check_step(backend, device, dtype, k, p, split, solver="pgd", tau=0.5, padded=False):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton kernels take fp32/bf16/fp16 gradients")
    if solver == "exact" and k != 2:
        pytest.skip("exact solver is K=2 only")
    buf = make_buf(k, p, dtype)
    want_buf = buf.clone()
    want = reference.uvs_cgr(want_buf, split, tau=tau, solver=solver)
    got_buf = padded_like(buf, device) if padded else buf.to(device, copy=True)
    got = ops.uvs_cgr(got_buf, split, tau=tau, solver=solver, backend=backend)
    torch.testing.assert_close(got_buf[1:].cpu(), buf[1:])  # other rows untouched
    assert got.status.item() == want.status.item()
    if split:
        if solver == "pgd":
            assert_uvs_matches(buf[:, :split], got_buf[0, :split], got.mu, got.alpha, got.gram)
        else:  # the exact K = 2 solution is unique to rounding
            torch.testing.assert_close(got.mu.cpu(), want.mu, rtol=0, atol=1e-4)
    rtol, atol = TOL[dtype]
    scale = float(want_buf[0, split:].abs().max().float()) if split < p else 1.0
    torch.testing.assert_close(got_buf[0, split:].cpu().float(), want_buf[0, split:].float(),
                               rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(got.gram_p.cpu(), want.gram_p, rtol=1e-4, atol=1e-4)
    return got_buf, got


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k,p,split", SHAPES)
def test_backends_match_reference(backend, device, dtype, k, p, split):
    if interpreted(backend, device) and p > 5000 and dtype != torch.float32:
        pytest.skip("interpreter: large sizes run in float32 only (speed)")
    check_step(backend, device, dtype, k, p, split)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p,split", [(8192, 4096), (8192, 8192), (8192, 0), (12289, 4095),
                                     (12289, 12288), (6143, 2049)])
def test_block_edges_on_padded_rows(backend, device, dtype, p, split):
    """Rows padded to 64 bytes (FlatGrads' layout: Triton's aligned, vectorised variant) with P
    and split on and off the kernels' block edges (2048 and 4096 columns), no tail block,
    a tail block in either segment, and empty segments."""
    if interpreted(backend, device) and dtype != torch.float32:
        pytest.skip("interpreter: block edges checked in float32 only (speed)")
    got_buf, _ = check_step(backend, device, dtype, 2, p, split, padded=True)
    assert got_buf.stride(0) % 16 == 0


@pytest.mark.parametrize("p,split", [(1000, 0), (1000, 300), (1000, 320), (1000, 1000),
                                     (1000, 999), (640, 320), (40, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_many_small_blocks(monkeypatch, p, split, dtype):
    """Triton's launch geometry at a scale the interpreter can run: 64-column blocks over 7
    programs and a 4-row partials reduction, so the grid-stride loops, the split and tail blocks
    owned by different programs and the last-program reduction all take several turns."""
    pytest.importorskip("triton")
    from csdfd.kernels import uvs_cgr as kstep

    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = dict(block1=64, block2=128, rblock=4, warps1=4, warps2=4, programs=7)
    monkeypatch.setattr(kstep, "block_params", lambda kp, interpret=False: small)
    kstep._launch_config.cache_clear()
    try:
        check_step("triton", device, dtype, 2, p, split, padded=True)
        assert kstep._launch_config(2, p, torch.device(device))["nprog"] == min(
            -(-p // 64), 7 * (1 if device == "cpu" else
                              torch.cuda.get_device_properties(0).multi_processor_count))
    finally:
        kstep._launch_config.cache_clear()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_exact_solver(backend, device):
    check_step(backend, device, torch.float32, 2, 1000, 900, solver="exact")


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("case", ["zeros", "opposite", "identical", "one_zero_row", "nan", "inf"])
def test_degenerate_inputs_match_reference(backend, device, case):
    a = torch.randn(300)
    rows = {
        "zeros": torch.zeros(2, 300),
        "opposite": torch.stack([a, -a]),
        "identical": torch.stack([a, a]),
        "one_zero_row": torch.stack([a, torch.zeros(300)]),
        "nan": torch.stack([a, a.clone().index_fill_(0, torch.tensor([7]), float("nan"))]),
        "inf": torch.stack([a, a.clone().index_fill_(0, torch.tensor([250]), float("inf"))]),
    }[case]
    want_buf = rows.clone()
    want = reference.uvs_cgr(want_buf, 200)
    got_buf = rows.to(device, copy=True)
    got = ops.uvs_cgr(got_buf, 200, backend=backend)
    assert torch.isfinite(got_buf[0]).all()
    torch.testing.assert_close(got_buf[0].cpu(), want_buf[0], rtol=2e-5, atol=1e-5)
    assert got.status.item() == want.status.item()


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_deterministic(backend, device):
    buf = make_buf(3, 20_011, torch.float32).to(device)
    outs = []
    for _ in range(2):
        b = buf.clone()
        stats = ops.uvs_cgr(b, 15_000, backend=backend)
        outs.append((b[0].clone(), stats.diag.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_unknown_and_unavailable_backend_errors():
    buf = torch.randn(2, 10)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.uvs_cgr(buf, 5, backend="cudnn")
    with pytest.raises(RuntimeError, match="Available"):
        ops.uvs_cgr(buf, 5, backend="cuda")
    with pytest.raises(ValueError, match="split"):
        ops.uvs_cgr(buf, 11)


@pytest.mark.parametrize("backend,device", [c for c in BACKEND_CASES if c[1] == "cpu"])
def test_no_allocation_of_size_p(backend, device):
    """The in-place step allocates nothing as large as the buffer's row (fp32, theta_p small)."""
    p, split = 200_000, 190_000
    buf = make_buf(2, p, torch.float32)
    diag = torch.zeros(diag_size(2))
    ops.uvs_cgr(buf.clone(), split, diag=diag, backend=backend)  # warm-up (compilation etc.)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        ops.uvs_cgr(buf, split, diag=diag, backend=backend)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert largest < p * 4 // 2, f"an allocation of {largest} bytes (row: {p * 4})"
