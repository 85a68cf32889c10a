"""--cgr-grad exact: the double-backward dL_phi/dtheta_p against finite differences, eq. 24's sign
convention, the trainer's wiring, the logged diagnostics, and validation of the new fields."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from csdfd import cgr_exact
from csdfd import train as cli
from csdfd.cgr_exact import conflict_loss, eq24_correction, exact_correction
from csdfd.config import resolve
from csdfd.data.stream import StepDataset
from csdfd.inference import to_input
from csdfd.models import Detector
from csdfd.ops import dispatch, reference
from csdfd.trainer import Trainer
from test_train import TINY, bench  # noqa: F401 - the tiny run and its module fixture


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_eq24_term_is_plus_grad_of_L_phi_under_its_assumptions():
    """Sign convention: with Hessians exactly tau diag(g (.) g) (eq. 23) and the norms held
    constant (eq. 24's derivation), autograd's +dL_phi/dtheta equals eq. 24's correction term
    -gamma (g1 g1 g2 + g2 g2 g1); the norms' own derivative is what the exact gradient adds."""
    g = torch.randn(2, 9, dtype=torch.float64)
    tau = 0.3
    hess = tau * g * g  # diagonal Hessians of L_k = 1/2 (t - a_k) H_k (t - a_k)
    a = -g / hess  # so that dL_k/dt at t = 0 is g_k
    t = torch.zeros(9, dtype=torch.float64, requires_grad=True)
    gk = [hess[k] * (t - a[k]) for k in range(2)]
    norms = gk[0].detach().norm() * gk[1].detach().norm()
    (frozen,) = torch.autograd.grad(-(gk[0] @ gk[1]) / norms, t, retain_graph=True)
    torch.testing.assert_close(frozen, eq24_correction(g[0], g[1], tau), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(reference.cgr(g[0], g[1], tau),
                               g[0] + g[1] + eq24_correction(g[0], g[1], tau))
    (full,) = torch.autograd.grad(conflict_loss(*gk), t)
    e1, e2 = g[0] / g[0].norm(), g[1] / g[1].norm()
    proj = (e1 @ e2) * (hess[0] * e1 / g[0].norm() + hess[1] * e2 / g[1].norm())
    torch.testing.assert_close(full, frozen + proj, rtol=1e-10, atol=1e-13)


def _tiny_detector(depth: int, act: str) -> Detector:
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh())
    return Detector(backbone, 5, proj_depth=depth, proj_width=3, proj_act=act).double()


def _stream_losses(model, x, n):
    real, f1, f2 = model(x).split(n)
    y = torch.cat([torch.zeros(n), torch.ones(n)]).double()
    return [F.binary_cross_entropy_with_logits(torch.cat([real, f]), y) for f in (f1, f2)]


@pytest.mark.parametrize(("depth", "act"), [(1, "gelu"), (2, "gelu"), (3, "silu")])
def test_exact_correction_matches_finite_differences(depth, act):
    model = _tiny_detector(depth, act)
    params = [p for _, p in model.theta_p()]
    n = 5
    x = torch.randn(3 * n, 3, 2, 2, dtype=torch.float64)

    def loss_phi() -> float:
        losses = _stream_losses(model, x, n)
        g = [_flat(torch.autograd.grad(loss, params, retain_graph=True)) for loss in losses]
        return float(conflict_loss(*g))

    d, ok = exact_correction(_stream_losses(model, x, n), params)
    assert bool(ok)
    eps, fd = 1e-5, []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for j in range(flat.numel()):
                keep = float(flat[j])
                flat[j] = keep + eps
                with torch.enable_grad():
                    up = loss_phi()
                flat[j] = keep - eps
                with torch.enable_grad():
                    down = loss_phi()
                flat[j] = keep
                fd.append((up - down) / (2 * eps))
    got, want = d, torch.tensor(fd, dtype=torch.float64)
    assert float(want.abs().max()) > 1e-3  # L_phi really depends on theta_p here
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8 * float(want.abs().max()))


def test_sharded_with_a_mean_reduce_is_the_global_gradient():
    """Data parallelism: two ranks (threads here) with half the batch each and ``reduce`` = the
    mean over ranks get dL_phi/dtheta_p of the full batch's gradients, not of their own."""
    model = _tiny_detector(2, "gelu")
    params = [p for _, p in model.theta_p()]
    x = torch.randn(3, 8, 3, 2, 2, dtype=torch.float64)  # [real, fake 1, fake 2] x 8 frames
    full, _ = exact_correction(_stream_losses(model, x.reshape(24, 3, 2, 2), 8), params)
    barrier, slots, got = threading.Barrier(2), [None, None], [None, None]

    def rank(r: int) -> None:
        def mean_(t):
            slots[r] = t.clone()
            barrier.wait()
            mean = (slots[0] + slots[1]) / 2
            barrier.wait()
            t.copy_(mean)

        shard = x[:, 4 * r : 4 * r + 4].reshape(12, 3, 2, 2)
        got[r], _ = exact_correction(_stream_losses(model, shard, 4), params, mean_)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(got[0], full, rtol=1e-10, atol=1e-12)
    assert torch.equal(got[0], got[1])
    local, _ = exact_correction(_stream_losses(model, x[:, :4].reshape(12, 3, 2, 2), 4), params)
    assert not torch.allclose(local, full, rtol=1e-3)  # a rank's own term is another one


def test_zero_stream_norm_drops_the_term():
    model = _tiny_detector(2, "gelu")
    params = [p for _, p in model.theta_p()]
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64)
    loss = model(x).mean()
    flat_loss = 0 * loss  # its gradient over theta_p is exactly zero
    _, ok = exact_correction([loss, flat_loss], params)
    assert not bool(ok)


def _expected_phi_term(trainer, batch, weight):
    """weight * dL_phi/dtheta_p by double backward through the whole model (not through
    csdfd.cgr_exact), on the trainer's forward batch."""
    model = trainer.model
    x = torch.cat([to_input(batch[k], trainer.mean, trainer.std, trainer.device)
                   for k in ("xr", "xf", "xs")])
    real, f1, f2 = model(x).split(len(batch["xr"]))
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(real))])
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    phi = [p for n, p in zip(names, params, strict=True) if n.startswith("phi.")]
    g = []
    for fake in (f1, f2):
        loss = F.binary_cross_entropy_with_logits(torch.cat([real, fake]), y)
        g.append(torch.autograd.grad(loss, params, create_graph=True))
    is_phi = [n.startswith("phi.") for n in names]
    g1p = _flat([t for t, m in zip(g[0], is_phi, strict=True) if m])
    g2p = _flat([t for t, m in zip(g[1], is_phi, strict=True) if m])
    lphi = -F.cosine_similarity(g1p, g2p, dim=0)
    flat_g = torch.stack([_flat(t).detach() for t in g])
    return weight * _flat(torch.autograd.grad(lphi, phi)), flat_g, torch.tensor(is_phi)


@pytest.mark.parametrize("backend", dispatch.backends("cpu"))
@pytest.mark.parametrize("mode", ["cgr", "csdfd"])
def test_step_applies_the_exact_term(mode, backend, bench, tmp_path):
    cfg = resolve({**TINY, "mode": mode, "cgr_grad": "exact", "cgr_weight": 0.5,
                   "backend": backend})
    trainer = Trainer(cfg, tmp_path, bench, quiet=True)
    assert trainer.cgr.op_tau == 0.0
    batch = StepDataset(bench, trainer.blend, 4, 32, 0, 0, (1, 2))[0]
    trainer._step(batch)
    applied = torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])
    term, g, is_phi_p = _expected_phi_term(trainer, batch, 0.5)
    sizes = [p.numel() for p in trainer.model.parameters()]
    is_phi = torch.cat([torch.full((s,), bool(m)) for s, m in zip(sizes, is_phi_p, strict=True)])
    expect = g.sum(0)
    expect[is_phi] += term
    if mode == "csdfd":
        expect[~is_phi] = reference.uvs(g[:, ~is_phi], cfg.c).v
    torch.testing.assert_close(applied, expect, rtol=2e-4, atol=1e-6)
    assert float(term.norm()) > 1e-3 * float(g[:, is_phi].sum(0).norm())  # visible


def test_eq24_step_ignores_the_logging_diagnostics(bench, tmp_path):
    """The eq24 default: computing the exact term for the log on a logging step changes nothing
    in the applied gradient (bit for bit)."""
    grads = []
    for log_every in (1, 1000):
        trainer = Trainer(resolve({**TINY, "log_every": log_every}), tmp_path / str(log_every),
                          bench, quiet=True)
        batch = StepDataset(bench, trainer.blend, 4, 32, 0, 0, (1, 2))[0]
        trainer._step(batch)
        assert (trainer.cgr._diag is not None) == (log_every == 1)
        grads.append(torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()]))
    assert torch.equal(grads[0], grads[1])


def _rows(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


@pytest.mark.parametrize("grad", ["eq24", "exact"])
def test_training_logs_the_comparison_on_logging_steps(grad, bench, tmp_path, monkeypatch):
    calls = []
    real = cgr_exact.exact_correction
    monkeypatch.setattr(cgr_exact, "exact_correction",
                        lambda *a: calls.append(1) or real(*a))
    cfg = resolve({**TINY, "cgr_grad": grad, "log_every": 2})
    result = Trainer(cfg, tmp_path, bench, quiet=True).fit()
    assert result["status"] == "finished"
    steps = len(bench.train_real) // 4
    rows = _rows(tmp_path)
    assert len(rows) == steps // 2 and len(calls) == (steps if grad == "exact" else steps // 2)
    for r in rows:
        assert -1 <= r["cgr_cos"] <= 1
        assert 0 < r["cgr_eq24_rel"] < 1e-2 < r["cgr_exact_rel"]  # eq. 24's term is tiny
        assert ("cgr_dropped" in r) == (grad == "exact")
        assert r.get("cgr_dropped", 0) == 0


@pytest.mark.parametrize("mode", ["OS", "uvs"])
def test_modes_without_cgr_ignore_cgr_grad(mode, bench, tmp_path):
    trainer = Trainer(resolve({**TINY, "mode": mode, "cgr_grad": "exact"}), tmp_path, bench,
                      quiet=True)
    trainer._step(StepDataset(bench, trainer.blend, 4, 32, 0, 0, (1, 2))[0])
    assert not trainer.cgr.active and trainer.cgr.op_tau == 0.0 and trainer.cgr.read() == {}


@pytest.mark.parametrize(
    ("override", "match"),
    [({"cgr_grad": "hessian"}, "cgr_grad must be eq24 or exact"),
     ({"cgr_weight": -1.0}, "cgr_weight must be finite and non-negative"),
     ({"cgr_weight": float("nan")}, "cgr_weight must be finite"),
     ({"cgr_weight": float("inf")}, "cgr_weight must be finite")],
)
def test_validation_of_the_new_fields(override, match):
    with pytest.raises(ValueError, match=match):
        resolve(override)


def test_flags_and_defaults(capsys):
    cfg = resolve({})
    assert (cfg.cgr_grad, cfg.cgr_weight) == ("eq24", 1.0)
    args = cli.build_parser().parse_args(["--cgr-grad", "exact", "--cgr-weight", "2"])
    cfg = resolve(cli.overrides_from(args))
    assert cfg.cgr_grad == "exact" and cfg.cgr_weight == 2.0
    with pytest.raises(SystemExit) as info:
        cli.main(["--cgr-grad", "nope", "--out", "unused"])
    assert info.value.code == 2 and "cgr_grad must be eq24 or exact" in capsys.readouterr().err
