"""``--compile`` (torch.compile of the backbone forward, inductor) against eager, per variant of
bench_stream_grads.py: plain O+S, two-pass and one-pass steps (forward + the backward(s) that
fill the [2, P] buffer), vit_tiny at 64 px, batch 16 per stream.

An eager and a compiled copy of the same model take one step each in turn, ``ROUNDS`` times
after the warm-up rounds that compile; printed per variant: compiled time / eager time (below
1: compile is faster), and the compile time (the warm-up's extra seconds). The trainer keeps
``compile`` off by default unless this says it is faster where it runs.

Run: ``cd bench && python -m pytest -q -s bench_compile.py`` (several minutes on a CPU: inductor
compiles each variant's graphs first).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from bench_stream_grads import ROUNDS, _setup, _variants
from conftest import device_name, sync

from csdfd.flatgrads import FlatGrads
from csdfd.models import compile_backbone
from csdfd.streamgrads import StreamGrads

MODEL = "vit_tiny"


def _compiled_twin(model, size):
    twin = copy.deepcopy(model)
    fg = FlatGrads(twin.theta(), twin.theta_p(), k=2)
    sg = StreamGrads(twin, fg, "auto", img_size=size, log=lambda m: None)
    compile_backbone(twin)
    return twin, fg, sg


def _timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def test_compile_vs_eager():
    model, fg, sg, x = _setup(MODEL)
    twin, tfg, tsg = _compiled_twin(model, x.shape[-1])
    eager = _variants(model, fg, sg, x)
    compiled = _variants(twin, tfg, tsg, x)
    lines = []
    for key in ("plain", "two-pass", "one-pass"):
        warm = [_timed(compiled[key]) for _ in range(2)]  # compiles
        times = {"eager": [], "compiled": []}
        for _ in range(ROUNDS):
            times["eager"].append(_timed(eager[key]))
            times["compiled"].append(_timed(compiled[key]))
        med = {k: statistics.median(v) for k, v in times.items()}
        lines.append(f"compile {MODEL} {key}: {med['compiled'] / med['eager']:.2f}x eager "
                     f"({med['eager'] * 1e3:.0f} ms eager; compiling took "
                     f"{sum(warm) - 2 * med['compiled']:.0f} s)")
        print("\n" + lines[-1])
    print("\n" + "\n".join(lines) + f"\n({device_name()}, {torch.get_num_threads()} threads)")
