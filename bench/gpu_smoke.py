"""Quick GPU check of the fused backends: correctness against the reference on one step, then
per-op time and effective bandwidth vs a device copy (CUDA events, 50 back-to-back calls).
Usage: python bench/gpu_smoke.py [backend ...]   (default: every fused CUDA backend)"""

import sys

import torch

from csdfd import ops

assert torch.cuda.is_available(), "needs a CUDA GPU"
backends = sys.argv[1:] or [b for b in ops.backends("cuda") if b != "reference"]
print(torch.cuda.get_device_name(), "torch", torch.__version__, "backends", backends, flush=True)
torch.manual_seed(0)
for backend in backends:
    for k, p, split, dtype in [(2, 1_000_003, 950_000, torch.float32),
                               (3, 100_001, 90_000, torch.bfloat16),
                               (5, 4097, 4000, torch.float16)]:
        buf = torch.randn(k, p, device="cuda", dtype=dtype)
        buf[1] -= 0.6 * buf[0]
        want_buf = buf.clone()
        want = ops.uvs_cgr(want_buf, split)
        got = ops.uvs_cgr(buf, split, backend=backend)
        torch.cuda.synchronize()
        err = ((buf[0].float() - want_buf[0].float()).abs().max()
               / want_buf[0].float().abs().max()).item()
        print(f"{backend} K={k} P={p} {dtype}: max rel err {err:.2e}, mu {got.mu.tolist()} vs "
              f"{want.mu.tolist()}, status {got.status.item()} vs {want.status.item()}", flush=True)


def time_ms(fn, n=50):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


for p in [1_000_000, 5_000_000, 20_000_000, 100_000_000]:
    buf = torch.randn(2, p, device="cuda")
    buf[1] -= 0.6 * buf[0]
    out = torch.empty_like(buf[0])
    dst = torch.empty_like(buf)
    copy = time_ms(lambda: dst.copy_(buf))
    copy_gbs = 2 * buf.numel() * 4 / copy / 1e6
    line = f"P={p:>11,} copy {copy:.3f} ms ({copy_gbs:.0f} GB/s)"
    for backend in backends:
        t = time_ms(lambda: ops.uvs_cgr(buf, int(p * 0.95), out=out, backend=backend))
        gbs = 20 * p / t / 1e6
        line += f" | {backend} {t:.3f} ms {gbs:.0f} GB/s = {gbs / copy_gbs:.0%} of copy"
    print(line, flush=True)
