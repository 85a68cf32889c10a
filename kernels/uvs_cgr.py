"""Triton kernels for the whole CS-DFD gradient step on a flat [K, P] buffer, in two passes.

Pass 1 (one launch, ``_pass1``): every program reads its share of the K rows once and
accumulates the K x K Gram partials of both segments, theta = [0, split) for UVS and
theta_p = [split, P) for CGR, into a scratch buffer. The last program to finish (atomic ticket,
acq_rel at GPU scope, after a CTA barrier) sums the partials in program order (deterministic,
bitwise run to run), solves the dual of eq. 15 on device (``kernels/solve_mu.py``) and writes
alpha (eq. 14), CGR's pairwise gamma_ij = tau / (||g_i|| ||g_j||) (eq. 24) and the diagnostics.
It then resets the ticket, so the next launch needs no host work.

Pass 2 (one launch, ``_pass2``): every program reads its columns of the K rows once and writes
v = sum_j alpha_j g_j over theta and sum_k g_k - sum_{i<j} gamma_ij g_i g_j (g_i + g_j) (eq. 24)
over theta_p into ``out`` (default row 0 of the buffer, which the parameters' .grad views alias).

Bytes per parameter for K streams of b-byte gradients: K b (pass 1) + K b + b (pass 2). No host
synchronisation: coefficients travel through a small device tensor.
"""

import functools

import torch
import triton
import triton.language as tl

from .solve_mu import TINY, solve_and_combine


@triton.jit
def _gram_segment(buf_ptr, stride, lo, hi, pid, nprog, k,
                  KP: tl.constexpr, BLOCK: tl.constexpr):
    """[KP, KP] partial Gram of columns [lo, hi) visited grid-stride by program ``pid``."""
    rows = tl.arange(0, KP)
    row_off = rows.to(tl.int64)[:, None] * stride
    acc = tl.zeros([KP, KP, BLOCK], dtype=tl.float32)
    for start in range(lo + pid * BLOCK, hi, nprog * BLOCK):
        cols = start + tl.arange(0, BLOCK)
        m = (rows[:, None] < k) & (cols[None, :] < hi)
        x = tl.load(buf_ptr + row_off + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += x[:, None, :] * x[None, :, :]
    return tl.sum(acc, axis=2)


@triton.jit
def _reduce_partials(part_ptr, nprog, which, KP: tl.constexpr, RBLOCK: tl.constexpr):
    """Sum the per-program [KP, KP] partials of segment ``which`` in a fixed order."""
    r = tl.arange(0, KP)
    idx = r[:, None] * KP + r[None, :]
    total = tl.zeros([KP, KP], dtype=tl.float32)
    for base in range(0, nprog, RBLOCK):
        prog = base + tl.arange(0, RBLOCK)
        ptrs = part_ptr + (prog[:, None, None] * 2 + which) * KP * KP + idx[None, :, :]
        tile = tl.load(ptrs, mask=prog[:, None, None] < nprog, other=0.0, cache_modifier=".cg")
        total += tl.sum(tile, axis=0)
    return total


@triton.jit(do_not_specialize=["stride", "split", "P", "k", "iters"])
def _pass1(buf_ptr, stride, split, P, part_ptr, ticket_ptr, diag_ptr, coef_ptr,
           k, c, tau, iters, beta0, beta_max, rel,
           KP: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr,
           EXACT: tl.constexpr, NB: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = tl.arange(0, KP)
    cols = tl.arange(0, KP)
    idx = rows[:, None] * KP + cols[None, :]
    g_t = _gram_segment(buf_ptr, stride, 0, split, pid, nprog, k, KP, BLOCK)
    g_p = _gram_segment(buf_ptr, stride, split, P, pid, nprog, k, KP, BLOCK)
    tl.store(part_ptr + (pid * 2) * KP * KP + idx, g_t)
    tl.store(part_ptr + (pid * 2 + 1) * KP * KP + idx, g_p)
    # Every thread's partial store happens before the barrier; the ticket's release (GPU scope)
    # publishes them, and the last program's acquire makes them visible to its loads below.
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == nprog - 1:
        G = _reduce_partials(part_ptr, nprog, 0, KP, RBLOCK)
        Gp = _reduce_partials(part_ptr, nprog, 1, KP, RBLOCK)
        mu, alpha, status, finite = solve_and_combine(
            G, rows, cols, k, c, iters, beta0, beta_max, rel, EXACT, NB, KP)
        valid = rows < k
        finite_p = tl.sum(tl.sum((Gp != Gp) | (tl.abs(Gp) == float("inf")), 1), 0) == 0
        ok = finite & finite_p
        sq_p = tl.sum(tl.where(rows[:, None] == cols[None, :], Gp, 0.0), axis=1)
        nrm = tl.sqrt(tl.maximum(sq_p, 0.0))
        prod = nrm[:, None] * nrm[None, :]
        upper = (rows[:, None] < cols[None, :]) & (cols[None, :] < k) & (prod > 0)
        gamma = tl.where(upper, tau / tl.maximum(prod, TINY), 0.0)
        zero_gp = ok & (split < P) & (tl.sum((valid & (sq_p <= 0)).to(tl.int32), 0) > 0)
        status = tl.where(ok, status + 8.0 * zero_gp.to(tl.float32), 1.0)
        mu = tl.where(ok, mu, tl.where(valid, 1.0 / k, 0.0))
        alpha = tl.where(ok, alpha, 0.0)
        # diagnostics: [gram (K*K) | gram_p (K*K) | mu (K) | alpha (K) | status]
        kk = k * k
        m2 = valid[:, None] & (cols[None, :] < k)
        tl.store(diag_ptr + rows[:, None] * k + cols[None, :], G, mask=m2)
        tl.store(diag_ptr + kk + rows[:, None] * k + cols[None, :], Gp, mask=m2)
        tl.store(diag_ptr + 2 * kk + rows, mu, mask=valid)
        tl.store(diag_ptr + 2 * kk + k + rows, alpha, mask=valid)
        tl.store(diag_ptr + 2 * kk + 2 * k, status)
        # coefficients for pass 2: [alpha (KP) | gamma (KP*KP) | ok]
        tl.store(coef_ptr + rows, alpha)
        tl.store(coef_ptr + KP + idx, gamma)
        tl.store(coef_ptr + KP + KP * KP, ok.to(tl.float32))
        tl.atomic_xchg(ticket_ptr, 0)  # ready for the next launch


@triton.jit(do_not_specialize=["stride", "split", "P", "k"])
def _pass2(buf_ptr, stride, out_ptr, split, P, coef_ptr, k,
           KP: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = tl.arange(0, KP)
    start = pid.to(tl.int64) * BLOCK
    cols = start + tl.arange(0, BLOCK)
    m = (rows[:, None] < k) & (cols[None, :] < P)
    x = tl.load(buf_ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :], mask=m,
                other=0.0).to(tl.float32)
    alpha = tl.load(coef_ptr + rows)
    ok = tl.load(coef_ptr + KP + KP * KP) > 0.5
    v = tl.sum(alpha[:, None] * x, axis=0)  # eq. 14 as v = sum_j alpha_j g_j
    if start + BLOCK > split:  # this block reaches the projection layer: eq. 24
        corr = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(KP):
            xi = tl.sum(tl.where(rows[:, None] == i, x, 0.0), axis=0)
            gam = tl.load(coef_ptr + KP + i * KP + rows)  # gamma_ij for j > i, else 0
            corr += tl.sum(gam[:, None] * xi[None, :] * x * (xi[None, :] + x), axis=0)
        v = tl.where(cols < split, v, tl.sum(x, axis=0) - corr)
    v = tl.where(ok, v, 0.0)
    tl.store(out_ptr + cols, v.to(out_ptr.dtype.element_ty), mask=cols < P)


_SCRATCH: dict = {}


def _scratch(device: torch.device, kp: int, nprog: int):
    """Per-(device, KP) scratch: partials, ticket, coefficients. Allocated once and grown when a
    larger grid needs it; the ticket is reset by the kernel itself. One step at a time per
    device and K (steps on concurrent streams would share it)."""
    key = (device, kp)
    part, ticket, coef = _SCRATCH.get(key, (None, None, None))
    if part is None or part.numel() < nprog * 2 * kp * kp:
        part = torch.empty(max(nprog, 1024) * 2 * kp * kp, dtype=torch.float32, device=device)
        ticket = torch.zeros(1, dtype=torch.int32, device=device) if ticket is None else ticket
        coef = torch.empty(kp + kp * kp + 1, dtype=torch.float32, device=device)
        _SCRATCH[key] = (part, ticket, coef)
    return part, ticket, coef


@functools.lru_cache(maxsize=64)
def _launch_config(k: int, p: int, device: torch.device) -> dict:
    """Block sizes and grid, per K and P (compiled once per K and dtype, not per step)."""
    kp = max(2, triton.next_power_of_2(k))
    interp = device.type == "cpu"  # TRITON_INTERPRET: few, large programs run fastest
    block1 = 4096 if interp else max(64, min(1024, 4096 // (kp * kp)))
    block2 = 4096 if interp else max(128, min(2048, 8192 // (kp * kp)))
    max_progs = 2 if interp else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    nprog = max(1, min(max_progs, triton.cdiv(p, block1)))
    return dict(kp=kp, block1=block1, block2=block2, nprog=nprog, grid2=triton.cdiv(p, block2))


def gram_pass(buf: torch.Tensor, split: int, diag: torch.Tensor, c: float, tau: float,
              solver: str, iters: int, beta0: float, beta_max: float, backtracks: int,
              rel: float) -> torch.Tensor:
    """Launch pass 1 on a row-contiguous [K, P] buffer (fp32 / bf16 / fp16): Gram matrices,
    on-device solve, ``diag`` (float32, layout of csdfd.ops.stats). Returns the coefficient
    tensor pass 2 reads."""
    k, p = buf.shape
    cfg = _launch_config(k, p, buf.device)
    kp = cfg["kp"]
    part, ticket, coef = _scratch(buf.device, kp, cfg["nprog"])
    _pass1[(cfg["nprog"],)](
        buf, buf.stride(0), split, p, part, ticket, diag, coef,
        k, float(c), float(tau), int(iters), float(beta0), float(beta_max), float(rel),
        KP=kp, BLOCK=cfg["block1"], RBLOCK=64, EXACT=solver == "exact", NB=backtracks,
        num_warps=4,
    )
    return coef


def uvs_cgr(buf: torch.Tensor, split: int, out: torch.Tensor, diag: torch.Tensor,
            c: float, tau: float, solver: str, iters: int, beta0: float, beta_max: float,
            backtracks: int, rel: float) -> None:
    """Launch pass 1 and pass 2: writes ``out`` ([P], may be ``buf[0]``) and ``diag``."""
    k, p = buf.shape
    coef = gram_pass(buf, split, diag, c, tau, solver, iters, beta0, beta_max, backtracks, rel)
    cfg = _launch_config(k, p, buf.device)  # cached: computed once per (K, P, device)
    _pass2[(cfg["grid2"],)](buf, buf.stride(0), out, split, p, coef, k,
                            KP=cfg["kp"], BLOCK=cfg["block2"], num_warps=4)
