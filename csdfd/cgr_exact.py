"""The exact conflict-descent gradient for the projection layer phi (``--cgr-grad exact``), and
the per-log-step comparison of eq. 24 with it.

Paper eqs. 18-24. The conflict descent loss on phi's parameters theta_p is

    L_phi = -e1 . e2,   e_k = g_kp / ||g_kp||,   g_kp = dL_k / d theta_p            (eq. 18)

and theta_p's gradient is that of L1 + L2 + L_phi (eq. 19, unit weights):
g1p + g2p + dL_phi / d theta_p. Differentiating e1 . e2,

    dL_phi/dtheta_p = -[H1 (e2 - (e1.e2) e1) / ||g1p|| + H2 (e1 - (e1.e2) e2) / ||g2p||],

with H_k = d^2 L_k / d theta_p^2. Eq. 24 keeps the first part of each bracket (the norms held
constant) and replaces H_k by tau * diag(g_kp (.) g_kp) (eq. 23), which gives its correction
term ``-gamma (g1 g1 g2 + g2 g2 g1)``, gamma = tau / (||g1p|| ||g2p||). So eq. 24's term is the
approximation of **+dL_phi/dtheta_p**: it is added to g1p + g2p, and the optimizer's descent on
the sum lowers L_phi (tests/test_cgr_exact.py checks this sign numerically: on quadratic losses
whose Hessians are exactly tau diag(g (.) g), eq. 24's term equals autograd's dL_phi/dtheta_p with
the norms detached, to rounding).

``exact`` computes dL_phi/dtheta_p by double backward instead: first-order g_kp with
``create_graph=True``, u_k = dL_phi/dg_kp, then the Hessian-vector products sum_k H_k u_k by one
more backward (:func:`exact_correction`). Both passes ask autograd for theta_p only, so they run
through the classifier and phi of the step's own forward graph and stop at phi's input: the
backbone is never differentiated twice (its features enter as constants), and the same dropout
mask and autocast dtype as the step's gradients apply. theta_p's gradient is then ``g1p + g2p +
cgr_weight * dL_phi/dtheta_p``: the fused op runs with tau = 0 on the phi segment (its output
there is g1p + g2p) and :meth:`CGRGradient.apply` adds the term to row 0.
UVS on theta is unchanged.

``cgr_weight`` defaults to 1, eq. 19's weight on L_phi: ``exact`` then means the true gradient of
the paper's own objective, and any other weight is a tuned hyper-parameter. Measured on the demo
(synthetic preset, seed 0, mode csdfd): eq. 24's correction is 2e-6 to 9e-5 of ||g1p + g2p||
(median 1.1e-5); the exact one at weight 1 is 0.02 to 70 times ||g1p + g2p|| (median 3.6) and
points elsewhere (cosine between them: median 0.42, -0.14 to 0.66). At weight 1, phi aligns the
streams' gradients (cos_p 0.91-0.99 over the first 60 steps) instead of learning: validation AUC 0.51-0.54 for four epochs,
in-domain 76.9 / cross-domain mean 68.7 after eight (eq24: 97.3 / 82.5, README). With
``cgr_weight=0.1`` validation AUC tracks eq24's (0.80 vs 0.80 after two epochs; 0.01: 0.77).
So a study comparing the two should also carry ``csdfd:cgr_grad=exact,cgr_weight=0.1``.

When ||g1p|| or ||g2p|| is zero or the exact term is not finite, the term is dropped (phi gets
g1p + g2p, as eq. 24's path does with gamma = 0 and the ZERO_GP flag) and the event is counted
in the logged ``cgr_dropped`` (under exact: steps of the log window). A non-finite g_kp makes
the whole step non-finite anyway; the trainer skips it.

Diagnostics (``metrics.jsonl``, logging steps only, so no per-step host read): ``cgr_cos``, the
cosine between eq. 24's correction (with ``tau``) and the exact one (with ``cgr_weight``), and
``cgr_eq24_rel`` / ``cgr_exact_rel``, each correction's norm over ||g1p + g2p||. Under
``cgr_grad=eq24`` the exact term is computed on logging steps only, for these numbers.

Cost (``bench/bench_cgr_exact.py``: demo model, i.e. the synthetic preset, test_efficientnet at
64 px, 48 images per forward, phi 2 x 128; cpp backend; one CPU thread; 30 interleaved steps
each, twice): exact takes 1.024-1.028x eq24's CPU time per step (wall 1.031-1.034x), and its
own work is 2.7-2.9% of its steps' wall time. Under eq24 the same work runs on logging steps
only (1 in ``log_every``). The share shrinks as the backbone grows: the double backward never
leaves phi and the classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .flatgrads import FlatGrads

GRADS = ("eq24", "exact")
_TINY = 1e-30


def conflict_loss(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """L_phi = -(g1 . g2) / (||g1|| ||g2||) (eq. 18) of two flat gradients; 0 if a norm is 0."""
    prod = torch.linalg.vector_norm(g1) * torch.linalg.vector_norm(g2)
    return -(g1 @ g2) / prod.clamp_min(_TINY)


def eq24_correction(g1: torch.Tensor, g2: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 24's correction term -gamma (g1 (.) g1 (.) g2 + g2 (.) g2 (.) g1), gamma = tau /
    (||g1|| ||g2||); 0 where a norm is 0 (gamma = 0, as the ops do)."""
    prod = torch.linalg.vector_norm(g1) * torch.linalg.vector_norm(g2)
    gamma = torch.where(prod > 0, tau / prod.clamp_min(_TINY), torch.zeros_like(prod))
    return -gamma * g1 * g2 * (g1 + g2)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _grads(out: torch.Tensor, params: list, **kw) -> torch.Tensor:
    """d out / d params, flat, zeros where a parameter is unused."""
    g = torch.autograd.grad(out, params, allow_unused=True, **kw)
    return _flat([torch.zeros_like(p) if x is None else x for x, p in zip(g, params, strict=True)])


Reduce = Callable[[torch.Tensor], None]


def exact_correction(
    losses: list[torch.Tensor], params: list[torch.nn.Parameter], reduce: Reduce | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL_phi/dtheta_p by double backward, flat over ``params`` (theta_p), and a 0-dim bool
    tensor that is False when it must be dropped (a zero stream norm, or not finite).

    By the chain rule, dL_phi/dtheta_p = sum_k H_k u_k with u_k = dL_phi/dg_k at the stream
    gradients g_k = dL_k/dtheta_p: first-order g_k with ``create_graph``, u_k from them (a
    K x P_phi computation), then one backward of sum_k g_k . u_k (Hessian-vector products).
    ``reduce`` (data parallelism: the in-place mean over ranks, e.g. csdfd.distributed's
    ``DataParallel.mean_``) is applied to the g_k before u_k and to the result, which makes it
    the gradient of L_phi of the global gradients (H_k and g_k are means over ranks); two
    all-reduces of P_phi values. ``losses`` are [L1, L2] of a live graph; it stays alive for
    the step's own backward. Nothing is accumulated into ``.grad``.
    """
    grads = [_grads(loss, params, create_graph=True) for loss in losses]
    g = [x.detach().clone() for x in grads]
    if reduce is not None:
        for x in g:
            reduce(x)
    leaves = [x.requires_grad_() for x in g]
    with torch.enable_grad():
        u = torch.autograd.grad(conflict_loss(*leaves), leaves)
    hvp = sum((gk * uk).sum() for gk, uk in zip(grads, u, strict=True))
    if hvp.requires_grad:  # retain: the step's own backward runs through the head's nodes next
        d = _grads(hvp, params, retain_graph=True)
    else:  # neither stream depends on theta_p: nothing to correct
        d = torch.zeros_like(g[0])
    if reduce is not None:
        reduce(d)
    ok = (torch.linalg.vector_norm(g[0]) > 0) & (torch.linalg.vector_norm(g[1]) > 0)
    return d, ok & torch.isfinite(d).all()


class CGRGradient:
    """theta_p's CGR gradient as ``cfg.cgr_grad`` asks, and its diagnostics, around the fused op.

    In the trainer's step: :meth:`prepare` on the live graph (before the per-stream backward
    frees it), :meth:`compare` on the filled buffer (before the op overwrites row 0), the op
    with ``op_tau``, then :meth:`apply`. Inactive (modes without CGR) it does nothing.
    Under torchrun with the rows all-reduced (csdfd.distributed's exact mode), pass
    ``reduce=dp.mean_`` and call :meth:`compare` after the rows' reduction and :meth:`apply`
    before anything averages row 0: every rank then adds the same global term. Without
    ``reduce`` the term is the rank's local one (right for the local mode, whose row 0 is
    averaged after the op).
    """

    def __init__(self, fg: FlatGrads | None, active: bool, grad: str, tau: float, weight: float,
                 reduce: Reduce | None = None):
        if grad not in GRADS:
            raise ValueError(f"cgr_grad must be one of {GRADS}, got {grad!r}")
        self.fg, self.tau, self.weight, self.reduce = fg, tau, weight, reduce
        self.active = active and fg is not None and fg.split < fg.numel
        self.exact = self.active and grad == "exact"
        #: tau for the fused op: eq. 24's, or 0 under exact (the op then writes g1p + g2p)
        self.op_tau = 0.0 if self.exact else tau
        if self.active:
            self.index = [i for i, s in enumerate(fg.segments) if s.projection]
            self.params = [fg.params[i] for i in self.index]
            self.dropped = torch.zeros((), dtype=torch.int64, device=fg.buf.device)
        self._term = self._ok = self._diag = None

    def prepare(self, losses: list[torch.Tensor], log: bool) -> None:
        """The exact term (weighted) when it is applied or, on logging steps, compared."""
        self._term = self._ok = self._diag = None
        self._log = log
        if self.active and (self.exact or log):
            d, self._ok = exact_correction(losses, self.params, self.reduce)
            self._term = self.weight * d

    def compare(self) -> None:
        """On logging steps: cosine of the two corrections and their norms over ||g1p + g2p||,
        from rows 0 and 1 of the buffer (before the op writes row 0); kept on the device."""
        if self._term is None or not self._log:
            return
        g1, g2 = (_flat([self.fg.rows[r][i] for i in self.index]).float() for r in (0, 1))
        c24 = eq24_correction(g1, g2, self.tau)
        cx = torch.where(self._ok, self._term.float(), torch.zeros_like(g1))
        n24, nx = torch.linalg.vector_norm(c24), torch.linalg.vector_norm(cx)
        base = torch.linalg.vector_norm(g1 + g2).clamp_min(_TINY)
        cos = torch.where(n24 * nx > 0, (c24 @ cx) / (n24 * nx).clamp_min(_TINY),
                          torch.zeros_like(n24))
        self._diag = torch.stack([cos, n24 / base, nx / base])

    def apply(self) -> None:
        """Under exact: row 0's theta_p segment += the term, or nothing (counted) if dropped."""
        if not self.exact:
            return
        self.dropped += (~self._ok).to(torch.int64)
        term = torch.where(self._ok, self._term, torch.zeros_like(self._term))
        for i, part in zip(self.index, term.split([p.numel() for p in self.params]), strict=True):
            row = self.fg.rows[0][i]  # the parameter's shape and layout; part is row-major
            row.add_(part.view(row.shape).to(row.dtype))

    def read(self) -> dict:
        """Host copy of the last logging step's diagnostics (one read), for metrics.jsonl."""
        if not self.active:
            return {}
        row: dict = {}
        if self._diag is not None:
            values = self._diag.tolist()
            row.update({k: (v if v == v and abs(v) != float("inf") else None)
                        for k, v in zip(("cgr_cos", "cgr_eq24_rel", "cgr_exact_rel"), values,
                                        strict=True)})
        if self.exact:
            row["cgr_dropped"] = int(self.dropped)
            self.dropped.zero_()
        return row
