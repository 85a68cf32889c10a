"""Cost of the stream gradients per step: plain O+S, two-pass and one-pass (csdfd.streamgrads).

One step here = the forward of ``cat([xr, xf, xs])`` (batch 16 per stream: 48 images) and the
backward(s) that fill the [2, P] buffer; the fused op and the optimizer, the same in every
variant, are left out. The variants:

* plain O+S: one backward of L1 + L2 into row 0 (what the ``OS`` mode runs between logging
  steps; the floor);
* two-pass: one backward per stream over the shared graph (:meth:`csdfd.FlatGrads.backward`);
* one-pass: the grouped forward and one backward of L1 + L2 split by row group.

They take one step each in turn, ``ROUNDS`` times, on the same model and batch, so drift hits
all alike; the ratios are medians over those rounds. Printed per model:
``stream-grads MODEL: two-pass X.XXx, one-pass Y.YYx plain O+S`` and the two-pass cost against
two plain backward passes plus one forward (the forward timed alone, in the same rounds).
Targets (issue 12): one-pass <= 1.15x plain for vit_tiny and convnext_atto, two-pass <= 1.05x
of forward + 2 backward. ``CSDFD_BENCH_MODELS`` picks models (comma-separated names from
MODELS); on a GPU the list adds vit_base at 224 px and efficientnet_b4 at 256 px. On a CPU
the steps run with the trainer's allocator setting (csdfd.cpumem, set in conftest.py;
``CSDFD_BENCH_SYSTEM_MALLOC=1`` for glibc's defaults), named at the end of each line.

Run: ``cd bench && python -m pytest -q -s bench_stream_grads.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import timm
import torch
from conftest import DEVICE, MALLOC, RESULTS, device_name, sync

from csdfd.flatgrads import FlatGrads
from csdfd.models import Detector
from csdfd.streamgrads import StreamGrads, stream_losses

ROUNDS = int(os.environ.get("CSDFD_BENCH_ROUNDS", "7"))
BATCH = 16  # per stream
#: name -> (timm model, image size, one-pass expected)
MODELS = {"vit_tiny": ("vit_tiny_patch16_224", 64, True),
          "convnext_atto": ("convnext_atto", 64, True),
          "efficientnet_b0": ("efficientnet_b0", 128, False)}
if DEVICE == "cuda":
    MODELS.update({"vit_base": ("vit_base_patch16_224", 224, True),
                   "efficientnet_b4": ("efficientnet_b4", 256, False)})
LINES: list[str] = []
RECORD: list[dict] = []


def _selected() -> list[str]:
    env = os.environ.get("CSDFD_BENCH_MODELS")
    return env.split(",") if env else list(MODELS)


def _setup(name: str):
    timm_name, size, _ = MODELS[name]
    torch.manual_seed(0)
    kw = {"img_size": size} if "vit" in timm_name else {}
    backbone = timm.create_model(timm_name, num_classes=0, **kw)
    model = Detector(backbone, backbone.num_features, 2, 512).to(DEVICE).train()
    fg = FlatGrads(model.theta(), model.theta_p(), k=2)
    sg = StreamGrads(model, fg, "auto", img_size=size, log=lambda m: None)
    x = torch.randn(3 * BATCH, 3, size, size, device=DEVICE)
    return model, fg, sg, x


def _variants(model, fg, sg, x) -> dict:
    def forward():
        with torch.no_grad():
            model(x)

    def plain():
        losses = stream_losses(model(x))
        fg.backward_sum(losses[0] + losses[1])

    def two_pass():
        fg.backward(stream_losses(model(x)))

    def one_pass():
        sg.backward(stream_losses(sg.forward(x)))

    out = {"forward": forward, "plain": plain, "two-pass": two_pass}
    if sg.one_pass:
        out["one-pass"] = one_pass
    return out


def _grad_forward_time(model, x) -> float:
    """The forward with autograd recording (what a training step's forward costs)."""
    sync()
    t0 = time.perf_counter()
    model(x)
    sync()
    return time.perf_counter() - t0


@pytest.mark.parametrize("name", _selected())
def test_stream_grads_cost(name):
    model, fg, sg, x = _setup(name)
    expected = MODELS[name][2]
    assert sg.one_pass == expected, sg.why_not
    variants = _variants(model, fg, sg, x)
    times: dict = {k: [] for k in [*variants, "grad-forward"]}
    for i in range(ROUNDS + 1):  # the first round warms up
        for key, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i:
                times[key].append(time.perf_counter() - t0)
        if i:
            times["grad-forward"].append(_grad_forward_time(model, x))
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = med["plain"]
    floor = 2 * plain - med["grad-forward"]  # one forward + two plain backward passes
    one = f"{med['one-pass'] / plain:.2f}x" if "one-pass" in med else "n/a (two-pass only)"
    line = (f"stream-grads {name}: two-pass {med['two-pass'] / plain:.2f}x, one-pass {one} "
            f"plain O+S | two-pass {med['two-pass'] / floor:.3f}x forward + 2 backward | "
            f"plain {plain * 1e3:.0f} ms ({MODELS[name][1]} px, batch {BATCH} per stream, "
            f"{device_name()}, {torch.get_num_threads()} threads"
            f"{f', malloc {MALLOC}' if MALLOC else ''})")
    LINES.append(line)
    RECORD.append({"model": name, "median_s": med, "rounds": ROUNDS, "device": device_name(),
                   "malloc": MALLOC or None})
    print("\n" + line)


def teardown_module(module):  # noqa: ARG001
    if not RECORD:
        return
    for line in LINES:
        print(line)
    stamp = time.strftime("%Y-%m-%d")
    path = RESULTS / f"stream-grads-{device_name()}-{stamp}.json"
    if os.environ.get("CSDFD_BENCH_SAVE"):
        path.write_text(json.dumps({"lines": LINES, "rows": RECORD}, indent=1))
        print(f"saved {path}")
