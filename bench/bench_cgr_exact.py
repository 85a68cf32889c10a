"""Extra cost of ``--cgr-grad exact`` over the paper's eq. 24, per training step, on the demo
model: the synthetic preset (test_efficientnet at 64 px, phi 2 x 128, batch 16, i.e. 48 images
per forward), mode csdfd, the fastest CPU backend (``auto``), logging off (so eq24 steps compute
no diagnostics). One step = forward, per-stream backward, the op, (exact: the double backward
and the add), optimizer step.

The two settings take one step each in turn, ``ROUNDS`` times, on the same batches, so drift
(other load, caches) hits both alike; rows report the median per-step wall and CPU time of
each, and the run prints the share of exact's steps spent in its own work (the double backward
and the add, timed inside those steps).

Measured (2-core CPU shared with ~5 other jobs, load ~5.5, torch 2.14.1, cpp backend), run as
``cd bench && OMP_NUM_THREADS=1 python -m pytest -q -s bench_cgr_exact.py`` twice: per step
eq24 265.4 / 220.1 ms CPU, exact 271.8 / 226.2 ms CPU (x1.024 / x1.028; wall x1.031 / x1.034);
exact's own work 2.9% / 2.7% of its steps' wall time. (With 2 threads on the loaded machine the
OpenMP threads spin: 1.65 s CPU per step, x1.10, own work 7.3% of wall; not a number to plan
with.)
"""

import statistics
import time

import torch
from conftest import DEVICE, ROWS, device_name, sync

from csdfd.config import resolve
from csdfd.data import synthetic
from csdfd.data.stream import StepDataset
from csdfd.trainer import Trainer

ROUNDS = 30
#: a small synthetic benchmark: step cost depends on batch and image size, not on the data count
SMALL = {"synth_train_ids": 8, "synth_val_ids": 2, "synth_test_ids": 2, "synth_frames": 20,
         "synth_eval_frames": 1, "backend": "auto", "log_every": 10**9, "device": DEVICE}


def _trainers(tmp_path):
    base = resolve(SMALL)
    bench = synthetic.make_benchmark(synthetic.SyntheticSpec.from_config(base), verbose=False)
    out = {}
    for grad in ("eq24", "exact"):
        out[grad] = Trainer(resolve({**SMALL, "cgr_grad": grad}), tmp_path / grad, bench,
                            quiet=True)
    ds = StepDataset(bench, out["eq24"].blend, base.batch_size, base.img_size, 0, 0, (1, 2))
    return out, [ds[i] for i in range(len(ds))]


def _clock() -> tuple[float, float]:
    sync()
    return time.perf_counter(), time.process_time()


def _timed(fn, acc: list):
    """Wrap ``fn`` so that its wall time is added to acc[0]."""

    def run(*args):
        t0 = time.perf_counter()
        out = fn(*args)
        sync()
        acc[0] += time.perf_counter() - t0
        return out

    return run


def test_exact_vs_eq24_step_time(tmp_path):
    trainers, batches = _trainers(tmp_path)
    inside = [0.0]  # wall time of exact's own work (prepare + apply) inside its steps
    cgr = trainers["exact"].cgr
    cgr.prepare, cgr.apply = _timed(cgr.prepare, inside), _timed(cgr.apply, inside)
    wall: dict = {g: [] for g in trainers}
    cpu: dict = {g: [] for g in trainers}
    for i in range(ROUNDS + 2):  # one step of each in turn, the first two are warm-up
        for grad, t in trainers.items():
            if i == 2 and grad == "eq24":
                inside[0] = 0.0
            w0, c0 = _clock()
            t._step(batches[i % len(batches)])
            t.opt.step()
            w1, c1 = _clock()
            if i >= 2:
                wall[grad].append(w1 - w0)
                cpu[grad].append(c1 - c0)
    fg = trainers["exact"].fg
    med = {g: statistics.median(ts) for g, ts in wall.items()}
    med_cpu = {g: statistics.median(ts) for g, ts in cpu.items()}
    share = inside[0] / sum(wall["exact"])
    for grad in trainers:
        ROWS.append(dict(op="csdfd_step (interleaved)", impl=f"cgr_grad={grad}", K=2,
                         P=fg.numel, seconds=med[grad], cpu_seconds=med_cpu[grad],
                         phi_params=fg.numel - fg.split, device=device_name()))
    print(f"\nthreads {torch.get_num_threads()}, median per step: eq24 {1e3 * med['eq24']:.1f} ms "
          f"wall / {1e3 * med_cpu['eq24']:.1f} ms CPU, exact {1e3 * med['exact']:.1f} ms wall "
          f"/ {1e3 * med_cpu['exact']:.1f} ms CPU; exact / eq24 = {med['exact'] / med['eq24']:.3f}"
          f" wall, {med_cpu['exact'] / med_cpu['eq24']:.3f} CPU; exact's own work (double "
          f"backward + add) = {100 * share:.1f}% of its steps' wall time")
