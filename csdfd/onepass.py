"""Both stream gradients from one backward pass (the mechanism; policy is csdfd.streamgrads).

One step forwards ``cat([xr, xf, xs])`` (row groups R, F, S of n rows each) and the two stream
losses of eq. 3 share the real rows: ``L1 = BCE([xr, xf])``, ``L2 = BCE([xr, xs])``, both means
over 2n. So dL1/d logit_r = dL2/d logit_r, and one backward of ``L1 + L2`` gives every row the
output gradient of its stream, twice that on the real rows. When no layer mixes samples
(LayerNorm, GroupNorm, Linear, convolutions, attention within a sample; not BatchNorm in
training mode), backpropagation is separate per row, so each weight gradient of that backward
is a sum over rows that splits by group into G_R, G_F, G_S, and (eq. 3)

    g1 = G_R / 2 + G_F,        g2 = G_R / 2 + G_S.

:class:`GroupedForward` is a TorchFunctionMode active during the backbone's forward. It
replaces every call that uses a trainable backbone parameter with a version whose backward
computes the three group sums and writes g1 and g2 straight into the parameter's rows of the
[2, P] FlatGrads buffer (:class:`RowSink`), returning no weight gradient to autograd:

* ``linear``, ``conv1d`` / ``conv2d`` (any stride, padding, dilation, groups: depthwise and
  grouped too), ``layer_norm``, ``group_norm``: one batched forward and one batched input
  gradient as before; the weight gradient, whose FLOPs are one sum over rows, is computed per
  group instead (G_R once, then each row by one ``addmm`` for linear, one call per group for
  conv and the norms), so the backward costs about what autograd's does.
* Parameters used directly (ViT's cls token and position embedding, LayerScale's gamma, in
  ``add``/``mul``/``cat``...): the parameter, or the tensor derived from parameters by
  parameter-only ops (``reshape``, ``expand``, a resampling), is replaced by its per-row
  version built from three aliases (``detach()``, no copy) of each parameter, one per group,
  so autograd itself delivers each group's sum to its alias. These are small (at most one
  activation's size). A weight computed from parameters (``weight * gain``, NFNet's weight
  standardisation, a cast) enters the replaced op as its three per-group recomputations.

Anything else that touches a parameter together with the batch is refused with
:class:`Unsupported` naming the parameter and the op, and so is BatchNorm in training mode
(it couples rows through the batch statistics): the caller then uses two backward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from .onepass_ops import ConvArgs, ConvGroups, Dest, LinearGroups, NormGroups, RowSink

__all__ = ["GroupedForward", "RowSink", "Unsupported"]

#: ops that pair rows one to one (broadcasting over the rest): a tracked argument is replaced
#: by its per-row version
_PER_ROW = {
    torch.add, torch.sub, torch.mul, torch.div, torch.Tensor.add, torch.Tensor.sub,
    torch.Tensor.mul, torch.Tensor.div, torch.Tensor.add_, torch.Tensor.sub_, torch.Tensor.mul_,
    torch.Tensor.div_, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
    torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.Tensor.__isub__, torch.Tensor.__mul__,
    torch.Tensor.__rmul__, torch.Tensor.__imul__, torch.Tensor.__truediv__,
    torch.Tensor.__itruediv__, torch.addcmul, torch.cat, torch.concat, torch.where,
    F.scaled_dot_product_attention,  # a learnt attn_mask (relative-position bias) broadcasts too
}
_BATCH_NORMS = {F.batch_norm, torch.batch_norm}
_RANDOM = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, torch.dropout,
           torch.bernoulli, torch.Tensor.bernoulli, torch.Tensor.bernoulli_}


class Unsupported(RuntimeError):
    """A layer or op the one-pass mechanism cannot split by row group (names it)."""


# --- the mode ---------------------------------------------------------------------------------
@dataclass
class _Derived:
    """A tensor computed from parameters by parameter-only ops: ``fn(params)``, so that it can
    be recomputed from each group's aliases of those parameters."""

    params: tuple[torch.Tensor, ...]
    fn: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
    tensor: torch.Tensor  # kept alive so that its id stays unique during the forward

    def of_group(self, mode: GroupedForward, g: int) -> torch.Tensor:
        """The tensor computed from group g's aliases (autograd carries its gradient there)."""
        return self.fn(tuple(mode.alias(p, g) for p in self.params))


class GroupedForward(TorchFunctionMode):
    """Active during the backbone forward of a 3n-row batch; see the module docstring.

    ``token`` is a 0-dim leaf every replaced op takes as an input (with a zero gradient), so a
    backward with ``inputs=[token, *aliases]`` runs every replaced op's backward and accumulates
    no gradient into any parameter's ``.grad``. After that backward, :meth:`finish` adds the
    aliases' group sums into the rows.
    """

    def __init__(self, sink: RowSink, rows: int):
        super().__init__()
        if rows % 3:
            raise ValueError(f"a one-pass forward takes 3 equal row groups, got {rows} rows")
        self.sink, self.rows = sink, rows
        sink.begin()
        self.token = torch.zeros((), requires_grad=True)
        self.derived: dict[int, _Derived] = {}
        self.aliases: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    # tracked = a backbone parameter, or a tensor derived from one
    def _source(self, t: object) -> _Derived | None:
        if t in self.sink:
            return _Derived((t,), lambda qs: qs[0], t)
        return self.derived.get(id(t)) if isinstance(t, torch.Tensor) else None

    def _touches(self, args, kwargs) -> bool:
        """Cheap test (no pytree): may an argument be tracked? Most ops see activations only."""
        for a in (*args, *kwargs.values()):
            if isinstance(a, (list, tuple)):
                if any(id(t) in self.sink.index or id(t) in self.derived for t in a):
                    return True
            elif id(a) in self.sink.index or id(a) in self.derived:
                return True
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BATCH_NORMS and _batch_norm_training(args, kwargs) and \
                self._source(args[0] if args else kwargs.get("input")) is None:
            raise Unsupported("BatchNorm in training mode (it mixes the rows of a batch through "
                              "its statistics)")
        if not self._touches(args, kwargs):
            return func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        tracked = [self._source(t) for t in leaves]
        if not any(tracked):  # nested deeper than one level and untracked after all
            return func(*args, **kwargs)
        untracked = [t for t, s in zip(leaves, tracked, strict=True)
                     if s is None and isinstance(t, torch.Tensor)]
        batch = [t for t in untracked if t.dim() and t.shape[0] == self.rows]
        if not batch:
            if any(t.requires_grad for t in untracked):
                names = self._names(tracked)
                raise Unsupported(f"{names} meets an activation whose first dim is "
                                  f"not the batch in {_fname(func)}")
            # parameter-only: a derived tensor (view, cast, resampling, expand, indexing...)
            return self._derive(func, args, kwargs, leaves, spec, tracked)
        if func is F.linear:
            return self._replace(LinearGroups, args, kwargs, ("input", "weight", "bias"))
        if func in (torch.conv1d, torch.conv2d):
            return self._conv(func, args, kwargs)
        if func is F.layer_norm:
            return self._norm("layer", args, kwargs, ("input", "normalized_shape", "weight",
                                                      "bias", "eps"), (None, None, None, None, 1e-5))
        if func is F.group_norm:
            return self._norm("group", args, kwargs, ("input", "num_groups", "weight", "bias",
                                                      "eps"), (None, None, None, None, 1e-5))
        if func in _PER_ROW:
            return self._per_row(func, leaves, spec, tracked, batch)
        names = self._names(tracked)
        raise Unsupported(f"{names} used by {_fname(func)}, an op one-pass does not "
                          "know how to split by row group")

    def _names(self, tracked) -> str:
        return ", ".join(sorted({self.sink.name(p) for s in tracked if s is not None
                                 for p in s.params}))

    def _derive(self, func, args, kwargs, leaves, spec, tracked):
        if func in _RANDOM and _random_draw(func, args, kwargs):
            raise Unsupported(f"{self._names(tracked)} goes through {_fname(func)}: its "
                              "recomputation per row group would draw a new random mask")
        params = tuple({id(p): p for s in tracked if s is not None for p in s.params}.values())
        where = {id(p): i for i, p in enumerate(params)}
        out = func(*args, **kwargs)

        def fn(qs, leaves=list(leaves), spec=spec, func=func):
            new = [t if s is None else s.fn(tuple(qs[where[id(p)]] for p in s.params))
                   for s, t in zip(tracked, leaves, strict=True)]
            a, kw = tree_unflatten(new, spec)
            return func(*a, **kw)

        if isinstance(out, torch.Tensor):
            self.derived[id(out)] = _Derived(params, fn, out)
        elif isinstance(out, (tuple, list)):  # chunk, split, unbind of a parameter
            for i, t in enumerate(out):
                if isinstance(t, torch.Tensor):
                    self.derived[id(t)] = _Derived(params, lambda qs, i=i: fn(qs)[i], t)
        return out

    def _replace(self, fn_cls, args, kwargs, names, *spec):
        """``fn_cls.apply``; a weight or bias derived from parameters (``weight * gain``, weight
        standardisation, a cast) also enters as its three per-group recomputations."""
        a = _bind(args, kwargs, names, (None,) * len(names))
        x, weight, bias = a["input"], a["weight"], a.get("bias")
        if self._source(x) is not None:
            raise Unsupported(f"{self._label(x)} is the input of {fn_cls.op}")
        extras, derived = [], []
        for t, what in ((weight, "weight"), (bias, "bias")):
            src = None if t is None or t in self.sink else self._source(t)
            if t is not None and t not in self.sink and src is None:
                raise Unsupported(f"the {what} of {fn_cls.op} next to a parameter is neither "
                                  "a parameter nor computed from parameters alone")
            derived.append(src is not None)
            if src is not None:
                extras += [src.of_group(self, g) for g in range(3)]
        dest = Dest(self.sink, tuple(derived))
        return fn_cls.apply(x, weight, bias, self.token, dest, *spec, *extras)

    def _label(self, t) -> str:
        s = self._source(t)
        return self._names([s]) if s is not None else "an activation"

    def _conv(self, func, args, kwargs):
        a = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation",
                                 "groups"), (None, None, None, 1, 0, 1, 1))
        dims = a["weight"].dim() - 2
        if isinstance(a["padding"], str):
            raise Unsupported(f"{self._label(a['weight'])}: convolution padding "
                              f"{a['padding']!r} (only explicit padding is supported)")
        conv = ConvArgs(func, *(_expand(a[k], dims) for k in ("stride", "padding", "dilation")),
                         a["groups"])
        return self._replace(ConvGroups, (a["input"], a["weight"], a["bias"]), {},
                             ("input", "weight", "bias"), conv)

    def _norm(self, kind, args, kwargs, names, defaults):
        a = _bind(args, kwargs, names, defaults)
        arg = list(a[names[1]]) if kind == "layer" else int(a[names[1]])
        if kind == "layer" and isinstance(a[names[1]], int):
            arg = [a[names[1]]]
        return self._replace(NormGroups, (a["input"], a["weight"], a["bias"]), {},
                             ("input", "weight", "bias"), (kind, arg, float(a["eps"])))

    def _per_row(self, func, leaves, spec, tracked, batch):
        """Replace each tracked argument by its per-row version from the group aliases."""
        ndim = max(t.dim() for t in batch)
        new = [self._rows_of(s, t, ndim, func) if s is not None else t
               for s, t in zip(tracked, leaves, strict=True)]
        a, kw = tree_unflatten(new, spec)
        return func(*a, **kw)

    def _rows_of(self, src: _Derived, t: torch.Tensor, ndim: int, func) -> torch.Tensor:
        n = self.rows // 3
        parts = []
        for g in range(3):
            d = src.of_group(self, g)
            if d.dim() < ndim:
                d = d.reshape((1,) * (ndim - d.dim()) + tuple(d.shape))
            if d.shape[0] == 1:
                parts.append(d.expand(n, *d.shape[1:]))
            elif d.shape[0] == self.rows:
                parts.append(d[g * n:(g + 1) * n])
            else:
                raise Unsupported(f"{self._names([src])} meets the batch in "
                                  f"{_fname(func)} with shape {tuple(t.shape)}, which neither "
                                  "broadcasts over the rows nor has one entry per row")
        return torch.cat(parts)

    def alias(self, p: torch.Tensor, g: int) -> torch.Tensor:
        """Group g's alias of parameter p: ``p.detach()`` (no copy) as a leaf of its own."""
        if id(p) not in self.aliases:
            self.aliases[id(p)] = (p, [p.detach().requires_grad_(True) for _ in range(3)])
        return self.aliases[id(p)][1][g]

    def inputs(self) -> list[torch.Tensor]:
        """What the one backward must reach: the token and every alias."""
        return [self.token] + [a for _, al in self.aliases.values() for a in al]

    def finish(self) -> None:
        """Add the aliases' group gradients into the rows (after the backward)."""
        for p, aliases in self.aliases.values():
            grads = [a.grad if a.grad is not None else torch.zeros_like(a) for a in aliases]
            self.sink.add(p, torch.stack(grads))
        self.aliases.clear()
        self.derived.clear()


def _random_draw(func, args, kwargs) -> bool:
    """Does this dropout-like call draw random numbers (p > 0 while training)?"""
    if func in (torch.bernoulli, torch.Tensor.bernoulli, torch.Tensor.bernoulli_):
        return True
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    train = kwargs.get("training", kwargs.get("train", args[2] if len(args) > 2 else True))
    return bool(train) and float(p) > 0


def _batch_norm_training(args, kwargs) -> bool:
    if "training" in kwargs:
        return bool(kwargs["training"])
    return len(args) > 5 and bool(args[5])


def _bind(args, kwargs, names, defaults) -> dict:
    out = dict(zip(names, defaults, strict=True))
    out.update(zip(names, args))
    out.update({k: v for k, v in kwargs.items() if k in out})
    return out


def _expand(v, dims: int) -> list[int]:
    return [int(v)] * dims if isinstance(v, int) else [int(i) for i in v]


def _fname(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
