"""Flat per-stream gradient buffers: one [K, P] tensor for a model's trainable parameters.

Row k holds stream k's gradient. Columns [0, split) belong to the UVS parameters theta, columns
[split, P) to the CGR projection layer theta_p (so the fused ops see two contiguous segments).
Each parameter's ``.grad`` is a view into one row, so autograd accumulates stream k's backward
pass directly into row k (``torch.autograd.backward(loss_k, inputs=params)``; no copy of size P),
and after :meth:`FlatGrads.step` the combined gradient sits in row 0, which is what every
``.grad`` points at, so any torch optimizer steps normally.

Why views + ``backward(inputs=...)`` rather than ``autograd.grad`` (+ a copy into the row) or
one ``is_grads_batched`` backward (vmap over the backward graph, + a copy): no [P] copy, no
[K, P] temporary, and it was the fastest of the three on efficientnet_b0 (batch 8 per stream,
224 px, 2 CPU cores, interleaved runs: 3.49 s vs 3.66 s and 4.23 s per step;
``bench/bench_flatgrads.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from . import ops
from .ops.stats import StepStats, diag_size


@dataclass(frozen=True)
class Segment:
    """Where one parameter lives in the flat buffer."""

    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # the parameter's own (dense) strides, e.g. channels_last
    projection: bool  # True for theta_p (CGR), False for theta (UVS)


def _named(params: Iterable) -> list[tuple[str, torch.nn.Parameter]]:
    """Accept parameters or (name, parameter) pairs; keep the trainable ones."""
    out = []
    for i, item in enumerate(params):
        name, p = item if isinstance(item, tuple) else (f"param{i}", item)
        if p.requires_grad:
            out.append((name, p))
    return out


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def _dense(p: torch.Tensor) -> bool:
    """True if p's strides are a permutation of a dense layout (channels_last and the like)."""
    dims = sorted((st, n) for st, n in zip(p.stride(), p.shape, strict=True) if n > 1)
    acc = 1
    for st, n in dims:
        if st != acc:
            return False
        acc *= n
    return True


class FlatGrads:
    """Owns the [K, P] buffer, its segment map and the ``.grad`` views into it.

    ``theta`` and ``theta_p`` are iterables of parameters or of (name, parameter) pairs
    (e.g. ``model.backbone.named_parameters()``). Parameters must share dtype and device.
    """

    def __init__(self, theta: Iterable, theta_p: Iterable = (), k: int = 2):
        if k < 2:
            raise ValueError(f"k (number of streams) must be >= 2, got {k}")
        named_theta, named_p = _named(theta), _named(theta_p)
        self.params = [p for _, p in named_theta + named_p]
        if not self.params:
            raise ValueError("no trainable parameters: theta and theta_p are empty or frozen")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("a parameter appears twice (in theta and theta_p, or repeated)")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"parameters must share one dtype and device, got {dtypes}, {devices}")
        self.k = k
        self.segments: list[Segment] = []
        offset = 0
        for proj, group in ((False, named_theta), (True, named_p)):
            for name, p in group:
                dense = p.is_contiguous() or _dense(p)
                stride = tuple(p.stride()) if dense else _contiguous_strides(p.shape)
                self.segments.append(Segment(name, offset, p.numel(), tuple(p.shape), stride, proj))
                offset += p.numel()
        self.split = sum(s.numel for s in self.segments if not s.projection)
        dtype, device = dtypes.pop(), devices.pop()
        # Rows start on 64-byte boundaries (padded row stride), so every row of the buffer is
        # aligned for the fused kernels' vector loads whatever P is; buf is the [K, P] view.
        pad = max(1, 64 // torch.empty((), dtype=dtype).element_size())
        stride = -(-offset // pad) * pad
        self.buf = torch.zeros(k, stride, dtype=dtype, device=device)[:, :offset]
        self.rows = [self._views(self.buf[r]) for r in range(k)]
        self.diag = torch.zeros(diag_size(k), dtype=torch.float32, device=self.buf.device)
        self.point_grads(0)

    @property
    def numel(self) -> int:
        """P, the number of trainable parameters."""
        return self.buf.shape[1]

    def _views(self, row: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views with the parameter's own memory layout (so a channels_last
        weight gets a channels_last .grad, as autograd's layout contract expects)."""
        return [row[s.offset : s.offset + s.numel].as_strided(s.shape, s.stride)
                for s in self.segments]

    def point_grads(self, row: int) -> None:
        """Make every parameter's ``.grad`` a view into ``buf[row]`` (no copy)."""
        for p, view in zip(self.params, self.rows[row], strict=True):
            p.grad = view

    def backward(self, losses: Sequence[torch.Tensor],
                 after_row: Callable[[int], None] | None = None) -> None:
        """Stream k's gradient into row k: one backward per loss over a shared forward graph.

        Autograd accumulates in place into an existing ``.grad``, so pointing the grads at row k
        and zeroing the buffer first lands d loss_k / d params in row k without any copy.
        ``after_row(k)``, when given, runs as soon as row k is complete (csdfd.distributed starts
        row k's all-reduce there, overlapped with row k+1's backward).
        """
        if len(losses) != self.k:
            raise ValueError(f"expected {self.k} losses (one per stream), got {len(losses)}")
        self.buf.zero_()
        for row, loss in enumerate(losses):
            self.point_grads(row)
            torch.autograd.backward(loss, inputs=self.params, retain_graph=row < self.k - 1)
            if after_row is not None:
                after_row(row)
        self.point_grads(0)

    def backward_sum(self, loss: torch.Tensor) -> None:
        """A plain backward of ``loss`` (L1 + L2: the O+S gradient, eq. 3) into row 0, which
        every ``.grad`` then views; the other rows are left as they are."""
        self.buf[0].zero_()
        self.point_grads(0)
        torch.autograd.backward(loss, inputs=self.params)

    def step(
        self,
        c: float = 0.5,
        tau: float = 0.01,
        solver: str = "pgd",
        iters: int | None = None,
        backend: str = "reference",
    ) -> StepStats:
        """UVS on theta and CGR on theta_p (Algorithm 1, lines 3-4), in place into row 0.

        After this, every ``.grad`` (a view into row 0) holds the combined gradient.
        """
        stats = ops.uvs_cgr(
            self.buf, self.split, c, tau, solver, iters, diag=self.diag, backend=backend
        )
        self.point_grads(0)
        return stats

    def sum_streams(self) -> None:
        """Plain L1 + L2 (the O+S strategy, eq. 3): row 0 <- sum of the rows, in place."""
        for r in range(1, self.k):
            self.buf[0].add_(self.buf[r])
        self.point_grads(0)
