"""Triton kernels for the whole CS-DFD gradient step on a flat [K, P] buffer, in two passes.

Pass 1 (one launch, ``_pass1``): every program reads its share of the K rows once and
accumulates the K x K Gram partials of both segments, theta = [0, split) for UVS and
theta_p = [split, P) for CGR, into a scratch buffer. Full blocks inside one segment are read
unmasked (128-bit loads on FlatGrads' 64-byte-aligned rows) into one register accumulator; only
the block holding ``split`` and the ragged last block are masked. The last program to finish
(atomic ticket, acq_rel at GPU scope, after a CTA barrier) sums the partials in a fixed order
(deterministic, bitwise run to run), solves the dual of eq. 15 on device
(``kernels/solve_mu.py``) and writes alpha (eq. 14), CGR's pairwise
gamma_ij = tau / (||g_i|| ||g_j||) (eq. 24) and the diagnostics. It then resets the ticket, so
the next launch needs no host work.

Pass 2 (one launch, ``_pass2``): every program reads its columns of the K rows once and writes
v = sum_j alpha_j g_j over theta and sum_k g_k - sum_{i<j} gamma_ij g_i g_j (g_i + g_j) (eq. 24)
over theta_p into ``out`` (default row 0 of the buffer, which the parameters' .grad views alias).

Bytes per parameter for K streams of b-byte gradients: K b (pass 1) + K b + b (pass 2). No host
synchronisation: coefficients travel through a small device tensor. Row alignment reaches the
compiler through Triton's launch-time specialisation of ``stride`` (a multiple of 16 or not),
so an unaligned buffer compiles a second, scalar-load variant rather than failing.
"""

import functools

import torch
import triton
import triton.language as tl

from .solve_mu import TINY, solve_and_combine


@triton.jit
def _load(ptrs, row_ok, cols, P, FULL: tl.constexpr):
    """Rows of a block of columns as float32 (0 outside the K rows and past P).

    FULL blocks (start + BLOCK <= P) carry no column mask: with 16-element-aligned rows (the
    FlatGrads layout) the compiler then emits 128-bit loads; a column mask would force scalar ones.
    """
    if FULL:
        x = tl.load(ptrs, mask=row_ok, other=0.0)
    else:
        x = tl.load(ptrs, mask=row_ok & (cols < P), other=0.0)
    return x.to(tl.float32)


@triton.jit
def _outer_block(buf_ptr, stride, rows, k, start, P, BLOCK: tl.constexpr, FULL: tl.constexpr):
    """g_i g_j for one block of columns as a [KP, KP, BLOCK] float32 tile, and the columns.

    The rows are loaded once as [KP, 1, BLOCK] and paired with their own transpose; both dims of
    size KP live in each thread's registers, so no shared-memory re-layout happens per block.
    """
    c3 = (start + tl.arange(0, BLOCK))[None, None, :]
    ri = rows[:, None, None]
    x = _load(buf_ptr + ri.to(tl.int64) * stride + c3, ri < k, c3, P, FULL)
    return x * tl.permute(x, (1, 0, 2)), c3


@triton.jit
def _gram_blocks(buf_ptr, stride, rows, k, first, end, step, P, BLOCK: tl.constexpr):
    """[KP, KP] Gram of the full blocks first, first + step, ... < end (eq. 15's G or CGR's)."""
    acc = tl.zeros([rows.shape[0], rows.shape[0], BLOCK], dtype=tl.float32)
    for b in range(first, end, step):
        prod, _c = _outer_block(buf_ptr, stride, rows, k, b * BLOCK, P, BLOCK, True)
        acc += prod  # b * BLOCK < P: no overflow (P is passed as int64 when it needs to be)
    return tl.sum(acc, axis=2)


@triton.jit
def _split_block(g_t, g_p, buf_ptr, stride, rows, k, b, split, P, BLOCK: tl.constexpr):
    """Add block b, masked to P, to whichever segment each of its columns belongs to."""
    prod, c3 = _outer_block(buf_ptr, stride, rows, k, b * BLOCK, P, BLOCK, False)
    in_t = c3 < split
    g_t += tl.sum(tl.where(in_t, prod, 0.0), axis=2)
    g_p += tl.sum(tl.where(in_t, 0.0, prod), axis=2)
    return g_t, g_p


@triton.jit
def _reduce_partials(part_ptr, nprog, KP: tl.constexpr, RBLOCK: tl.constexpr):
    """Sum the per-program partials ([nprog, 2, KP, KP]) of both segments in a fixed order.
    RBLOCK >= nprog in the usual K = 2 launch, so this is one load and one tree sum."""
    e = tl.arange(0, 2 * KP * KP)
    total = tl.zeros([2 * KP * KP], dtype=tl.float32)
    for base in range(0, nprog, RBLOCK):
        prog = base + tl.arange(0, RBLOCK)
        ptrs = part_ptr + prog[:, None] * (2 * KP * KP) + e[None, :]
        tile = tl.load(ptrs, mask=prog[:, None] < nprog, other=0.0, cache_modifier=".cg")
        total += tl.sum(tile, axis=0)
    seg = tl.reshape(total, [2, KP, KP])
    first = (tl.arange(0, 2) == 0)[:, None, None]
    return tl.sum(tl.where(first, seg, 0.0), axis=0), tl.sum(tl.where(first, 0.0, seg), axis=0)


@triton.jit(do_not_specialize=["split", "P", "k", "iters"])
def _pass1(buf_ptr, stride, split, P, part_ptr, ticket_ptr, diag_ptr, coef_ptr,
           k, c, tau, iters, beta0, beta_max, rel,
           KP: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr,
           EXACT: tl.constexpr, NB: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = tl.arange(0, KP)
    cols = tl.arange(0, KP)
    idx = rows[:, None] * KP + cols[None, :]
    # Full blocks inside theta, then full blocks inside theta_p, grid-stride with one
    # accumulator; then the (at most two) blocks that need a mask: the one holding split and
    # the ragged last one.
    nfull = P // BLOCK
    n_t = split // BLOCK
    ragged_split = split % BLOCK != 0
    g_t = _gram_blocks(buf_ptr, stride, rows, k, pid, n_t, nprog, P, BLOCK)
    first_p = tl.where(ragged_split, n_t + 1, n_t)  # first block wholly inside theta_p
    g_p = _gram_blocks(buf_ptr, stride, rows, k, first_p + pid, nfull, nprog, P, BLOCK)
    if ragged_split & (pid == n_t % nprog):
        g_t, g_p = _split_block(g_t, g_p, buf_ptr, stride, rows, k, n_t, split, P, BLOCK)
    tail = (P % BLOCK != 0) & ((n_t != nfull) | (split % BLOCK == 0))  # not the split block
    if tail & (pid == nfull % nprog):
        g_t, g_p = _split_block(g_t, g_p, buf_ptr, stride, rows, k, nfull, split, P, BLOCK)
    base = part_ptr + pid * (2 * KP * KP)
    tl.store(base + idx, g_t)
    tl.store(base + KP * KP + idx, g_p)
    # Every thread's partial store happens before the barrier; the ticket's release (GPU scope)
    # publishes them, and the last program's acquire makes them visible to its loads below.
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == nprog - 1:
        G, Gp = _reduce_partials(part_ptr, nprog, KP, RBLOCK)
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


@triton.jit
def _combine(x, rows, cols, start, split, coef_ptr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """v over one block: sum_j alpha_j g_j on theta (eq. 14), and on theta_p
    sum_k g_k - sum_{i<j} gamma_ij g_i g_j (g_i + g_j) (eq. 24); zeros if the input was
    non-finite."""
    alpha = tl.load(coef_ptr + rows)
    ok = tl.load(coef_ptr + KP + KP * KP) > 0.5
    v = tl.sum(alpha[:, None] * x, axis=0)
    if start + BLOCK > split:  # this block reaches the projection layer
        corr = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(KP):
            xi = tl.sum(tl.where(rows[:, None] == i, x, 0.0), axis=0)
            gam = tl.load(coef_ptr + KP + i * KP + rows)  # gamma_ij for j > i, else 0
            corr += tl.sum(gam[:, None] * xi[None, :] * x * (xi[None, :] + x), axis=0)
        v = tl.where(cols < split, v, tl.sum(x, axis=0) - corr)
    return tl.where(ok, v, 0.0)


@triton.jit
def _write_block(buf_ptr, stride, out_ptr, rows, k, start, split, P, coef_ptr,
                 KP: tl.constexpr, BLOCK: tl.constexpr, FULL: tl.constexpr):
    """Pass 2 on columns [start, start + BLOCK): read the K rows, write v (unmasked if FULL)."""
    cols = start + tl.arange(0, BLOCK)
    x = _load(buf_ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :], rows[:, None] < k,
              cols[None, :], P, FULL)
    v = _combine(x, rows, cols, start, split, coef_ptr, KP, BLOCK).to(out_ptr.dtype.element_ty)
    if FULL:
        tl.store(out_ptr + cols, v)
    else:
        tl.store(out_ptr + cols, v, mask=cols < P)


@triton.jit(do_not_specialize=["split", "P", "k"])
def _pass2(buf_ptr, stride, out_ptr, split, P, coef_ptr, k,
           KP: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.arange(0, KP)
    start = tl.program_id(0).to(tl.int64) * BLOCK
    if start + BLOCK <= P:  # full block: vector loads and store
        _write_block(buf_ptr, stride, out_ptr, rows, k, start, split, P, coef_ptr, KP, BLOCK, True)
    else:
        _write_block(buf_ptr, stride, out_ptr, rows, k, start, split, P, coef_ptr, KP, BLOCK,
                     False)


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


def block_params(kp: int, interpret: bool = False) -> dict:
    """Compile-time block sizes and warps per padded K, and programs for pass 1 (per SM on a
    GPU, in all under the interpreter). Shared with the AOT compile test.

    Pass 1 keeps one [KP, KP, BLOCK1] float32 accumulator: 8192 elements (32 registers a thread
    at 8 warps) whatever K, so a K = 2 program streams 2048 columns (16 KB of fp32) a block.
    Its last program also runs the float64 K x K solve, which alone would take 94 registers
    (K = 2; 214 for K = 3..8), so pass 1 is capped at ``maxnreg1``: 64 for K = 2 (4 programs
    fit on an SM) and 128 otherwise (2 programs, as before the float64 solve). ptxas then
    spills in the solve, after the ticket, and at most a few values around the streaming
    loops, never inside them (tests/test_triton_compile.py checks the SASS).
    Pass 2 holds a [KP, BLOCK2] tile: 4096 elements, 16 a thread at 8 warps (64 registers for
    K = 2 fp32, sm_90 ptxas; 123 at 4 warps).
    RBLOCK covers the usual 4 programs per SM in one load when K = 2.
    """
    if interpret:  # TRITON_INTERPRET: few, large programs run fastest
        return dict(block1=4096, block2=4096, rblock=64, warps1=4, warps2=4, programs=2,
                    maxnreg1=None)
    return dict(block1=max(64, 8192 // (kp * kp)), block2=max(512, 4096 // kp),
                rblock=max(16, 8192 // (2 * kp * kp)), warps1=8, warps2=8, programs=4,
                maxnreg1=64 if kp == 2 else 128)


@functools.lru_cache(maxsize=64)
def _launch_config(k: int, p: int, device: torch.device) -> dict:
    """Blocks and grid per K and P (compiled once per K, dtype and row alignment, not per step)."""
    kp = max(2, triton.next_power_of_2(k))
    interp = device.type == "cpu"
    cfg = block_params(kp, interp)
    max_progs = cfg["programs"] * (
        1 if interp else torch.cuda.get_device_properties(device).multi_processor_count)
    nprog = max(1, min(max_progs, triton.cdiv(p, cfg["block1"])))
    return dict(cfg, kp=kp, nprog=nprog, grid2=max(1, triton.cdiv(p, cfg["block2"])))


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
        KP=kp, BLOCK=cfg["block1"], RBLOCK=cfg["rblock"], EXACT=solver == "exact",
        NB=backtracks, num_warps=cfg["warps1"], maxnreg=cfg.get("maxnreg1"),
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
                            KP=cfg["kp"], BLOCK=cfg["block2"], num_warps=cfg["warps2"])
