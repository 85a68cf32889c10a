"""Shared test setup: the Triton interpreter on CPU-only machines, devices, backends, tolerances."""

import os

import torch

# Triton reads TRITON_INTERPRET when it is first imported (torch._dynamo and optimizers import it),
# so decide before anything else does: without a GPU, Triton kernels run through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from csdfd import ops  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: (backend, device) pairs that can run here; the reference is the spec, so it is checked
#: against independent float64 maths in the property tests and every other backend against it.
BACKEND_CASES = [(b, d) for d in DEVICES for b in ops.backends(d)]
FAST_CASES = [(b, d) for b, d in BACKEND_CASES if b != "reference"]

#: Per-dtype tolerances (rtol, atol relative to the scale of the values compared).
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-6),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float16: (4e-3, 2e-3),
}


def interpreted(backend: str, device: str) -> bool:
    """True when a Triton kernel would run through the (slow) CPU interpreter."""
    return backend == "triton" and device == "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
