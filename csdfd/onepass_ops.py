"""The per-op pieces of one-pass stream gradients (csdfd.onepass): where group gradients go
(:class:`RowSink`, straight into the FlatGrads rows) and the autograd functions that replace
``linear``, ``conv1d``/``conv2d``, ``layer_norm`` and ``group_norm`` during the grouped
forward. Each computes the op batched, and in backward the input gradient batched and the
weight gradient per row group (G_R, G_F, G_S), which together cost one weight gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: row k of the buffer = G_{F or S} + REAL * G_R: g1 = G_R / 2 + G_F, g2 = G_R / 2 + G_S (eq. 3)
REAL = 0.5

class RowSink:
    """Where group gradients go: parameter ``p``'s views into rows 0 and 1 of the buffer.

    The first write of a parameter in a step overwrites its rows (no zeroing pass, no
    accumulation pass); a second use of the same parameter adds. :meth:`begin` starts a step,
    :meth:`end` zeroes the rows of the parameters the step never reached.
    """

    def __init__(self, params: list[torch.nn.Parameter], rows: list[list[torch.Tensor]],
                 names: dict[int, str]):
        self.params, self.index = params, {id(p): i for i, p in enumerate(params)}
        self.rows, self.names = rows, names
        self.written: set[int] = set()

    def __contains__(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.index

    def begin(self) -> None:
        self.written = set()

    def end(self, skip: set[int]) -> None:
        """Zero the rows of every parameter neither written nor in ``skip`` (ids)."""
        for p, *views in zip(self.params, *self.rows, strict=True):
            if id(p) not in self.written and id(p) not in skip:
                for view in views:
                    view.zero_()

    def _first(self, p: torch.Tensor) -> bool:
        first = id(p) not in self.written
        self.written.add(id(p))
        return first

    def add(self, p: torch.Tensor, groups: torch.Tensor) -> None:
        """``groups`` [3, *p.shape]: G_R, G_F, G_S; row k gets G_{1+k} + REAL * G_R."""
        i, first = self.index[id(p)], self._first(p)
        groups = groups.reshape(3, *p.shape)
        for k in range(2):
            view = self.rows[k][i]
            mine, real = groups[1 + k].to(view.dtype), groups[0].to(view.dtype)
            if first:
                torch.add(mine, real, alpha=REAL, out=view)
            else:
                view.add_(mine).add_(real, alpha=REAL)

    def linear(self, p: torch.Tensor, gy3: torch.Tensor, x3: torch.Tensor) -> None:
        """A weight gradient ``sum_rows gy^T x`` per group, gy3 [3, m, out], x3 [3, m, in]:
        G_R once, then each row in one GEMM (``addmm`` of G_R / 2), straight into the row."""
        i = self.index[id(p)]
        views = [self.rows[k][i] for k in range(2)]
        fast = gy3.dtype == views[0].dtype and all(v.is_contiguous() for v in views)
        if not fast or id(p) in self.written:
            self.add(p, torch.bmm(gy3.transpose(1, 2), x3))
            return
        views = [v.view(gy3.shape[-1], x3.shape[-1]) for v in views]  # 1x1 conv: [o, i, 1, 1]
        self.written.add(id(p))
        real = gy3[0].t() @ x3[0]
        for k, view in enumerate(views):
            torch.addmm(real, gy3[1 + k].t(), x3[1 + k], beta=REAL, out=view)

    def name(self, p: torch.Tensor) -> str:
        return self.names.get(id(p), "a parameter")

# --- per-op autograd functions ------------------------------------------------------------------
def _compute_dtype(x: torch.Tensor, low_precision: bool) -> torch.dtype:
    """What autocast would run the op in: its lower dtype for matmul/conv, float32 for norms."""
    if not torch.is_autocast_enabled(x.device.type):
        return x.dtype
    return torch.get_autocast_dtype(x.device.type) if low_precision else torch.float32


def _no_autocast(x: torch.Tensor):
    """autocast off inside the op (its inputs are cast already); a no-op context when off."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _by_group(t: torch.Tensor) -> torch.Tensor:
    """[3n, ...] -> [3, n, ...] (a view when ``t`` is row-major in its first dim)."""
    return t.reshape(3, t.shape[0] // 3, *t.shape[1:])


@dataclass(frozen=True)
class Dest:
    """Where one replaced op's weight and bias group gradients go: into the rows (the sink),
    or, for a tensor computed from parameters (``derived``), to that op's extra inputs (its
    recomputation from each group's aliases), through which autograd reaches the aliases."""

    sink: RowSink
    derived: tuple[bool, bool]  # weight, bias

    def deliver(self, which: int, p: torch.Tensor | None, groups, out: list) -> None:
        """``groups`` [3, *p.shape] (or a callable making it) for weight (0) or bias (1)."""
        if p is None:
            return
        groups = groups() if callable(groups) else groups
        if self.derived[which]:
            out.extend(groups.unbind(0))
        else:
            self.sink.add(p, groups)


class LinearGroups(torch.autograd.Function):
    op = "linear"

    @staticmethod
    def forward(ctx, x, weight, bias, token, dest, *extras):  # noqa: ARG004 - see Dest
        dt = _compute_dtype(x, True)
        xc, wc, bc = x.to(dt), weight.to(dt), _cast(bias, dt)
        with _no_autocast(x):
            y = F.linear(xc, wc, bc)
        ctx.save_for_backward(xc, wc)
        ctx.dest, ctx.params = dest, (weight, bias)
        return y

    @staticmethod
    def backward(ctx, gy):
        xc, wc = ctx.saved_tensors
        weight, bias = ctx.params
        gy = gy.to(wc.dtype)
        gx = gy @ wc if ctx.needs_input_grad[0] else None
        g3, x3 = _by_group(gy).flatten(1, -2), _by_group(xc).flatten(1, -2)  # [3, n*T, .]
        out: list = []
        if ctx.dest.derived[0]:
            ctx.dest.deliver(0, weight, torch.bmm(g3.transpose(1, 2), x3), out)
        else:
            ctx.dest.sink.linear(weight, g3, x3)
        ctx.dest.deliver(1, bias, lambda: g3.sum(1), out)
        return gx, None, None, torch.zeros(()), None, *out


class ConvGroups(torch.autograd.Function):
    op = "a convolution"

    @staticmethod
    def forward(ctx, x, weight, bias, token, dest, conv, *extras):  # noqa: ARG004
        dt = _compute_dtype(x, True)
        xc, wc, bc = x.to(dt), weight.to(dt), _cast(bias, dt)
        with _no_autocast(x):
            y = conv.fn(xc, wc, bc, conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(xc, wc)
        ctx.dest, ctx.params, ctx.conv = dest, (weight, bias), conv
        return y

    @staticmethod
    def backward(ctx, gy):
        xc, wc = ctx.saved_tensors
        weight, bias = ctx.params
        c = ctx.conv
        gy = gy.to(wc.dtype)
        if c.pointwise(wc):
            return _pointwise_backward(ctx, gy, xc, wc, weight, bias)

        def conv_backward(g, x, mask):
            return torch.ops.aten.convolution_backward(
                g, x, wc, [wc.shape[0]] if bias is not None else None, c.stride, c.padding,
                c.dilation, False, [0] * len(c.stride), c.groups, mask)

        gx = conv_backward(gy, xc, [True, False, False])[0] if ctx.needs_input_grad[0] else None
        parts = [conv_backward(g, x, [False, True, bias is not None])
                 for g, x in zip(gy.chunk(3), xc.chunk(3), strict=True)]
        out: list = []
        ctx.dest.deliver(0, weight, torch.stack([p[1] for p in parts]), out)
        ctx.dest.deliver(1, bias, lambda: torch.stack([p[2] for p in parts]), out)
        return gx, None, None, torch.zeros(()), None, None, *out


def _pointwise_backward(ctx, gy, xc, wc, weight, bias):
    """A 1x1 convolution (stride 1, no padding, one group) is a linear layer over the
    channels-last rows: its gradients by matmuls (views when the tensors are channels-last in
    memory, as after a LayerNorm2d), like :class:`LinearGroups`; on CPU well under mkldnn's four
    calls (one batched input gradient, three per-group weight gradients)."""
    o, cin = wc.shape[:2]
    last = (0, *range(2, gy.dim()), 1)
    g2 = gy.permute(last).reshape(-1, o)
    gx = None
    if ctx.needs_input_grad[0]:
        gx = (g2 @ wc.reshape(o, cin)).reshape(gy.shape[0], *gy.shape[2:], cin)
        gx = gx.permute(0, gx.dim() - 1, *range(1, gx.dim() - 1))
    g3, x3 = g2.reshape(3, -1, o), xc.permute(last).reshape(3, -1, cin)
    out: list = []
    if ctx.dest.derived[0]:
        ctx.dest.deliver(0, weight, torch.bmm(g3.transpose(1, 2), x3).reshape(3, *wc.shape), out)
    else:
        ctx.dest.sink.linear(weight, g3, x3)
    ctx.dest.deliver(1, bias, lambda: g3.sum(1), out)
    return gx, None, None, torch.zeros(()), None, None, *out


@dataclass(frozen=True)
class ConvArgs:
    fn: Callable
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def pointwise(self, weight: torch.Tensor) -> bool:
        return (self.groups == 1 and all(k == 1 for k in weight.shape[2:])
                and all(s == 1 for s in self.stride) and not any(self.padding))


class NormGroups(torch.autograd.Function):
    """layer_norm (normalised trailing dims) or group_norm (channel groups of dim 1)."""

    op = "a normalisation"

    @staticmethod
    def forward(ctx, x, weight, bias, token, dest, spec, *extras):  # noqa: ARG004
        xc = x.to(_compute_dtype(x, False))
        wc, bc = _cast(weight, xc.dtype), _cast(bias, xc.dtype)
        with _no_autocast(x):
            if spec[0] == "layer":
                y, mean, rstd = torch.ops.aten.native_layer_norm(xc, spec[1], wc, bc, spec[2])
            else:
                xc = xc.contiguous()
                n, ch = xc.shape[:2]
                y, mean, rstd = torch.ops.aten.native_group_norm(
                    xc, wc, bc, n, ch, xc[0, 0].numel(), spec[1], spec[2])
        ctx.save_for_backward(xc, wc, bc, mean, rstd)
        ctx.dest, ctx.params, ctx.spec = dest, (weight, bias), spec
        return y

    @staticmethod
    def backward(ctx, gy):
        xc, wc, bc, mean, rstd = ctx.saved_tensors
        weight, bias = ctx.params
        kind, arg, _ = ctx.spec
        # contiguous once here, not once per call below (4 calls: the input gradient + 3 groups)
        gy, xc = gy.to(xc.dtype).contiguous(), xc.contiguous()
        if kind == "layer":
            def norm_backward(g, x, m, r, mask):
                return torch.ops.aten.native_layer_norm_backward(g, x, arg, m, r, wc, bc, mask)
        else:
            def norm_backward(g, x, m, r, mask):
                n, ch = x.shape[:2]
                return torch.ops.aten.native_group_norm_backward(
                    g, x, m, r, wc, n, ch, x[0, 0].numel(), arg, mask)

        gx = (norm_backward(gy, xc, mean, rstd, [True, False, False])[0]
              if ctx.needs_input_grad[0] else None)
        mask = [False, weight is not None, bias is not None]
        parts = [norm_backward(*t, mask) for t in zip(gy.chunk(3), xc.chunk(3), mean.chunk(3),
                                                      rstd.chunk(3), strict=True)]
        out: list = []
        ctx.dest.deliver(0, weight, lambda: torch.stack([p[1] for p in parts]), out)
        ctx.dest.deliver(1, bias, lambda: torch.stack([p[2] for p in parts]), out)
        return gx, None, None, torch.zeros(()), None, None, *out
