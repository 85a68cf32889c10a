"""CPU training: keep freed memory in the process rather than returning it to the OS each step.

Why. glibc's malloc serves a large request with its own ``mmap`` (from 128 KiB; the threshold
rises with use, to at most 32 MiB) and unmaps it on free, and it trims the heap's free top once
that exceeds twice the threshold. A training step on a CPU allocates and frees the same large
activations and gradients every step, so with those defaults every step faults its working set
in again, page by page, each page zero-filled by the kernel. Two-pass steps suffer most: the
first backward keeps the forward graph (``retain_graph``), so its gradients cannot reuse the
saved activations' memory and land in fresh pages.

What. :func:`keep_freed_memory` turns both off for the process (``mallopt``: no mmap-served
chunks, trimming only beyond 2 GiB of free heap top), so a step reuses the previous step's
pages once the heap has settled (a few steps). The cost: the process keeps its peak heap, plus
what fragmentation adds, until it exits.

Measured on the 2-core CPU machine, 2 threads (``bench/bench_stream_grads.py``, medians of 7
interleaved rounds; ``bench/results/README.md``): efficientnet_b0 at 128 px, 48 images, the
plain O+S step 1.78 s -> 1.66 s and the two-pass step 3.42 s -> 2.73 s, with 7% more peak
memory; the demo (test_efficientnet, 64 px) gains nothing, its tensors being small, for 14%
more peak memory.

The trainer calls it when it trains on the CPU (``keep_cpu_memory``, on by default); on a GPU
the CUDA caching allocator already keeps device memory. Elsewhere than glibc (macOS, musl) it
does nothing and says why.
"""

from __future__ import annotations

import ctypes
import platform

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: free heap top kept before glibc trims it (mallopt takes an int)
TRIM_THRESHOLD = 2**31 - 1

_applied = False


def keep_freed_memory() -> str | None:
    """Make glibc's malloc keep freed memory for the rest of the process (module docstring).

    Returns None once it is in effect (idempotent), else why it is not: not glibc, or glibc
    refused a setting. Not undone: restoring the defaults by ``mallopt`` would pin the mmap
    threshold at 128 KiB, slower than either state.
    """
    global _applied
    if _applied:
        return None
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return f"the C library is {libc_name or 'not glibc'}, whose malloc has no mallopt"
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for param, value, name in ((M_MMAP_MAX, 0, "M_MMAP_MAX"),
                               (M_TRIM_THRESHOLD, TRIM_THRESHOLD, "M_TRIM_THRESHOLD")):
        if mallopt(param, value) != 1:
            return f"glibc refused mallopt({name}, {value})"
    _applied = True
    return None
