"""Stream gradients g1, g2 into the rows of the FlatGrads buffer: two backward passes, or one.

``stream_grads`` (Config, ``--stream-grads``) chooses:

* ``two-pass``: one backward per stream loss over the shared forward graph
  (:meth:`csdfd.FlatGrads.backward`), exact for every network.
* ``one-pass``: one backward of ``L1 + L2`` whose weight gradients are split by row group
  (:mod:`csdfd.onepass`): a CS-DFD step at about the cost of a plain O+S step. Valid only when
  no layer mixes the rows of a batch; a model where that cannot be shown is an error naming the
  layer.
* ``auto`` (default): one-pass where it is valid, else two passes, with one message naming the
  layer that rules one-pass out.

Validity is decided before training, in two steps: (1) BatchNorm in training mode anywhere in
the backbone rules one-pass out (its batch statistics couple the rows; per-group statistics
would change what is learnt, a sub-batch of only fakes normalised by itself, so the exact floor
there is two passes); (2) a probe: on 2 random images per group, one-pass rows must equal
``autograd.grad`` of each loss, parameter by parameter, and any op the mechanism does not know
stops it (:class:`csdfd.onepass.Unsupported`). Never silently wrong: what the probe cannot
split, or splits differently, falls back (``auto``) or fails (``one-pass``).

The head (phi and the classifier) always runs outside the grouped forward: its per-stream
gradients come from two backward passes restricted to its own parameters (the head's share of
a step is tiny), which also keeps it differentiable twice for ``--cgr-grad exact``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .flatgrads import FlatGrads
from .onepass import GroupedForward, RowSink, Unsupported

STREAM_GRADS = ("auto", "two-pass", "one-pass")
_SHOWN: set[str] = set()


def mixing_layers(module: nn.Module) -> list[str]:
    """Names of the layers that couple the rows of a batch: BatchNorm in training mode."""
    return [f"{name or type(module).__name__} ({type(m).__name__} in training mode)"
            for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


class StreamGrads:
    """Per-step: the forward (grouped when one-pass) and the backward that fills the rows.

    ``model`` is a :class:`csdfd.models.Detector` (backbone + :meth:`head`), ``fg`` the
    FlatGrads over all its trainable parameters; ``img_size`` and ``channels_last`` shape the
    validity probe's batch (:func:`probe`).
    """

    def __init__(self, model: nn.Module, fg: FlatGrads, how: str = "auto", *,
                 img_size: int = 64, channels_last: bool = False,
                 log: Callable[[str], None] | None = None):
        if how not in STREAM_GRADS:
            raise ValueError(f"stream_grads must be one of {STREAM_GRADS}, got {how!r}")
        self.model, self.fg = model, fg
        backbone_ids = {id(p) for p in model.backbone.parameters()}
        self.head_params = [p for p in fg.params if id(p) not in backbone_ids]
        self.head_ids = {id(p) for p in self.head_params}
        names = {id(p): seg.name for p, seg in zip(fg.params, fg.segments, strict=True)}
        self.sink = RowSink(fg.params, fg.rows, names)
        self._mode: GroupedForward | None = None
        self.why_not = self._why_not(how, img_size, channels_last)
        self.one_pass = self.why_not is None
        if how == "one-pass" and not self.one_pass:
            raise ValueError(f"--stream-grads one-pass is not valid for this model: "
                             f"{self.why_not}; use --stream-grads auto (falls back to two "
                             "backward passes) or two-pass")
        if how == "auto" and not self.one_pass:
            _once(f"stream gradients: two backward passes per step, because {self.why_not}",
                  log)

    @property
    def method(self) -> str:
        return "one-pass" if self.one_pass else "two-pass"

    def _why_not(self, how: str, img_size: int, channels_last: bool) -> str | None:
        if how == "two-pass":
            return "two-pass was asked for"
        layers = mixing_layers(self.model.backbone)
        if layers:
            more = f" and {len(layers) - 1} more" if len(layers) > 1 else ""
            return f"the backbone mixes samples in {layers[0]}{more}"
        return probe(self, img_size, channels_last)

    def forward(self, x: torch.Tensor, split: bool = True) -> torch.Tensor:
        """Logits of the 3n-row batch ``x``; grouped (one-pass) when ``split`` needs it."""
        if not (split and self.one_pass):
            self._mode = None
            return self.model(x)
        self._mode = GroupedForward(self.sink, x.shape[0])
        with self._mode:
            f = self.model.backbone(x)
        return self.model.head(f)

    def backward(self, losses: Sequence[torch.Tensor],
                 after_row: Callable[[int], None] | None = None) -> None:
        """g1, g2 (eq. 3) into rows 0 and 1 of the buffer, after :meth:`forward`."""
        mode, self._mode = self._mode, None
        if mode is None:
            self.fg.backward(losses, after_row)
            return
        fg = self.fg
        for row, loss in enumerate(losses):  # the head: its own two small backward passes
            fg.point_grads(row)
            for p in self.head_params:
                p.grad.zero_()
            if self.head_params:
                torch.autograd.backward(loss, inputs=self.head_params, retain_graph=True)
        fg.point_grads(0)
        # the backbone: one backward; each weight gradient is written into its rows
        torch.autograd.backward(losses[0] + losses[1], inputs=mode.inputs())
        mode.finish()
        self.sink.end(skip=self.head_ids)
        if after_row is not None:
            for row in range(fg.k):
                after_row(row)


def _once(message: str, log: Callable[[str], None] | None) -> None:
    if message not in _SHOWN:
        _SHOWN.add(message)
        (log or (lambda m: print(m, file=sys.stderr)))(message)


def stream_losses(logits: torch.Tensor, n: int | None = None) -> list[torch.Tensor]:
    """L1 = BCE([xr, xf]), L2 = BCE([xr, xs]) (eq. 3) of the logits of ``cat([xr, xf, xs])``:
    one loss per fake group after the ``n`` real rows (default: a third of the rows; one fake
    group, 2n rows, for the single-stream modes)."""
    n = logits.shape[0] // 3 if n is None else n
    real, *fakes = logits.float().split(n)
    target = torch.cat([torch.zeros(n), torch.ones(n)]).to(logits.device)
    return [F.binary_cross_entropy_with_logits(torch.cat([real, f]), target) for f in fakes]


@torch.no_grad()
def probe_batch(model: nn.Module, img_size: int, channels_last: bool, per_group: int = 2):
    """Random ``3 * per_group`` images on the model's device (its own generator)."""
    p = next(model.parameters())
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(3 * per_group, 3, img_size, img_size, generator=gen).to(p.device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def probe(sg: StreamGrads, img_size: int, channels_last: bool) -> str | None:
    """None when one-pass reproduces ``autograd.grad`` of each loss on a random batch, else
    why not (an op it does not know, or the first parameter whose gradient differs). Restores
    the RNG, the buffers and the gradients' row pointers; runs in the model's mode, in float32
    even for amp runs (it checks which ops split, which autocast does not change; bf16
    rounding would blur the comparison)."""
    model, fg = sg.model, sg.fg
    x = probe_batch(model, img_size, channels_last)
    device = x.device
    buffers = [b.clone() for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            ref_losses = stream_losses(sg.model(x))
            refs = [torch.autograd.grad(loss, fg.params, retain_graph=True, allow_unused=True)
                    for loss in ref_losses]
            torch.manual_seed(0)
            sg.one_pass = True
            try:
                sg.backward(stream_losses(sg.forward(x)))
            except Unsupported as exc:
                return str(exc)
            return _first_difference(sg, refs, 1e-3)
    finally:
        sg._mode = None
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
        fg.buf.zero_()
        fg.point_grads(0)


def _first_difference(sg: StreamGrads, refs, tol: float) -> str | None:
    """The first parameter whose one-pass gradient differs from autograd's, per row."""
    fg = sg.fg
    for row, ref in enumerate(refs):
        ref = [torch.zeros_like(p) if g is None else g for p, g in zip(fg.params, ref,
                                                                       strict=True)]
        norms = torch.stack([g.norm() for g in ref])
        errs = torch.stack([(got - g).norm() for g, got in zip(ref, fg.rows[row], strict=True)])
        floor = 1e-3 * norms.norm() / len(ref) ** 0.5  # parameters with (almost) no gradient
        bad = (errs > tol * (norms + floor)).nonzero()
        if len(bad):
            i = int(bad[0])
            return (f"its gradient of {sg.sink.name(fg.params[i])} differs from two backward "
                    f"passes (stream {row + 1}: error {float(errs[i]):.3g}, norm "
                    f"{float(norms[i]):.3g}); some op mixes the rows of a batch, reaches the "
                    "parameter in a way one-pass does not see, or draws its dropout differently "
                    "when one-pass changes its input's layout (attention dropout inside "
                    "scaled_dot_product_attention)")
    return None
