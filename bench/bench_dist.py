"""Data parallelism (csdfd.distributed) on the embedded benchmark, CPU and gloo:

- bytes all-reduced per step: exact ([2, P] buffer), local (row 0) and a plain DDP of one
  summed gradient (P values), counted at ``torch.distributed.all_reduce``;
- step time (forward, both backwards, reduction, UVS/CGR, optimizer) with 1 and 2 processes,
  and with 2: the row-wise async reduction (row 0 overlapped with row 1's backward) against one
  blocking reduction after both backwards;
- how far ``--dist-uvs local`` is from exact: cosine and norm ratio of the two updates over a
  few steps of training (along the exact trajectory).

    PYTHONPATH=$PWD python -m pytest -q -s bench/bench_dist.py
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

BATCH, WARM, STEPS = 8, 2, 6
CFG = {"device": "cpu", "epochs": 1, "batch_size": BATCH, "log_every": 1000,
       "synth_train_ids": 8, "synth_val_ids": 2, "synth_test_ids": 2, "synth_frames": 4,
       "synth_eval_frames": 2}  # the embedded benchmark's model (preset), fewer frames


def _trainer(out: str):
    from csdfd.config import resolve
    from csdfd.data.stream import StepDataset
    from csdfd.trainer import Trainer

    tr = Trainer(resolve(CFG), out, quiet=True)
    c = tr.cfg
    ds = StepDataset(tr.bench, tr.blend, BATCH, c.img_size, c.seed, 0, (1, 2), c.hflip,
                     tr.dp.rank, tr.dp.world)
    return tr, [ds[i % len(ds)] for i in range(WARM + STEPS)]


def _count_bytes() -> list[int]:
    import torch.distributed as dist

    sent, orig = [0], dist.all_reduce

    def counting(t, *a, **kw):
        sent[0] += t.numel() * t.element_size()
        return orig(t, *a, **kw)

    dist.all_reduce = counting
    return sent


def _time(tr, batches, mode: str, overlap: bool, sent: list[int]) -> dict:
    tr.dp.mode, tr.dp.overlap = mode, overlap
    times, nbytes = [], []
    for i, batch in enumerate(batches):
        before, t0 = sent[0], time.perf_counter()
        *_, bad = tr._step(batch)
        bool(tr.dp.any(bad))
        tr.opt.step()
        if i >= WARM:
            times.append(time.perf_counter() - t0)
            nbytes.append(sent[0] - before - 4)  # minus the 1-int skip decision
    return {"step_s": statistics.median(times), "bytes": statistics.median(nbytes)}


def _local_vs_exact(tr, batches) -> dict:
    """cos(v_local, v_exact) and ||v_local|| / ||v_exact|| at each step."""
    tr.dp.mode, cos, ratio = "local", [], []
    op, buf = tr.fg.step, tr.fg.buf
    local_rows = {}

    def capture(*a, **kw):
        local_rows["rows"] = buf.clone()
        return op(*a, **kw)

    tr.fg.step = capture
    for batch in batches:
        tr._step(batch)  # local: per-rank UVS/CGR, mean of row 0
        v_local = buf[0].clone()
        buf.copy_(local_rows["rows"])
        for row in buf:  # exact: mean rows, then the op
            tr.dp.mean_(row)
        op(tr.c, tr.tau, tr.cfg.solver, tr.iters, tr.backend)
        v = buf[0]
        cos.append(float(torch.dot(v_local, v) / (v_local.norm() * v.norm())))
        ratio.append(float(v_local.norm() / v.norm()))
        tr.opt.step()
    tr.fg.step = op
    return {"cos": cos, "norm_ratio": ratio}


def _rank_main(dump: str) -> None:
    sent = _count_bytes()
    tr, batches = _trainer(tempfile.mkdtemp())
    res = {"P": tr.fg.numel, "backbone": tr.cfg.backbone, "img_size": tr.cfg.img_size,
           "exact_overlap": _time(tr, batches, "exact", True, sent),
           "exact_blocking": _time(tr, batches, "exact", False, sent),
           "local": _time(tr, batches, "local", True, sent),
           "local_vs_exact": _local_vs_exact(tr, batches)}
    if tr.dp.main:
        Path(dump).write_text(json.dumps(res))
    tr.dp.close()


def _launch(dump: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).parents[1])
    procs = [subprocess.Popen([sys.executable, __file__, str(dump)], env={
        **os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
        "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": root,
        "PYTHONWARNINGS": "ignore"}) for r in range(2)]
    try:
        for p in procs:
            assert p.wait(timeout=400) == 0
    finally:
        for p in procs:
            p.kill()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU/gloo measurement")
def test_bench_dist(tmp_path):
    dump = tmp_path / "two.json"
    _launch(dump)
    two = json.loads(dump.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1)
    try:
        tr, batches = _trainer(str(tmp_path / "one"))
        one = _time(tr, batches, "exact", True, [0])
    finally:
        torch.set_num_threads(threads)
    p = two["P"]
    lve = two["local_vs_exact"]
    lines = [
        f"{two['backbone']} @ {two['img_size']} px, P = {p}, batch {BATCH} per rank, gloo, "
        f"{os.cpu_count()} CPU cores",
        f"bytes all-reduced per step: exact {two['exact_overlap']['bytes']:.0f} "
        f"(2P x 4), local {two['local']['bytes']:.0f}, plain DDP of one summed gradient "
        f"{4 * p} (P x 4)",
        f"step time: 1 process {one['step_s']:.3f} s (batch {BATCH}); 2 processes "
        f"(global batch {2 * BATCH}): exact, row-wise async {two['exact_overlap']['step_s']:.3f}"
        f" s, exact, blocking after both backwards {two['exact_blocking']['step_s']:.3f} s, "
        f"local {two['local']['step_s']:.3f} s",
        "local vs exact update: cos " + ", ".join(f"{c:.4f}" for c in lve["cos"])
        + "; ||local|| / ||exact|| " + ", ".join(f"{r:.4f}" for r in lve["norm_ratio"]),
    ]
    print("\n" + "\n".join(lines))
    assert two["exact_overlap"]["bytes"] == 2 * two["local"]["bytes"] == 8 * p
    assert all(abs(c) <= 1.0 + 1e-4 for c in lve["cos"])  # finite, a cosine


if __name__ == "__main__":
    _rank_main(sys.argv[1])
