"""One-pass stream gradients (csdfd.onepass, csdfd.streamgrads) against autograd per loss.

For every layer kind the mechanism splits (Linear, Conv1d/2d incl. grouped and depthwise,
LayerNorm, GroupNorm, parameters used directly: a cls token, a position embedding, LayerScale,
in place too) and for timm's ViT, DeiT and ConvNeXt, the two rows one backward of L1 + L2 writes
equal ``autograd.grad(L_k)`` of each stream loss; odd row counts, channels_last and bf16
autocast included. Models it cannot split fall back (auto) or fail (one-pass), naming why.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from test_train import RESUME, _assert_same_run, _cfg, _grads, _train_rows, bench  # noqa: F401

from csdfd.data.stream import StepDataset
from csdfd.flatgrads import FlatGrads
from csdfd.models import Detector
from csdfd.onepass import GroupedForward, RowSink
from csdfd.streamgrads import StreamGrads, mixing_layers, stream_losses
from csdfd.trainer import STRATEGIES, Trainer

SIZE = 12


class Toy(nn.Module):
    """A small backbone built around one layer kind; returns [B, width] features."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 11), nn.GELU(),
                                        nn.Linear(11, 7, bias=False))
        elif kind == "conv2d":  # strided + padded, depthwise with dilation, grouped, 1x1
            self.layers = nn.Sequential(
                nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6), nn.GELU(),
                nn.Conv2d(6, 9, 3, padding=(1, 0), groups=3, bias=False), nn.GELU(),
                nn.Conv2d(9, 7, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif kind == "conv1d":
            self.layers = nn.Sequential(nn.Flatten(2), nn.Conv1d(3, 5, 5, stride=3, padding=1),
                                        nn.GELU(), nn.Conv1d(5, 5, 3, groups=5), nn.GELU(),
                                        nn.Conv1d(5, 5, 1), nn.GELU(),
                                        nn.AdaptiveAvgPool1d(1), nn.Flatten())
        elif kind == "layernorm":
            self.patch = nn.Conv2d(3, 10, 4, stride=4)
            self.norm = nn.LayerNorm(10)
            self.norm2 = nn.LayerNorm([9, 10], elementwise_affine=True)
            self.fc = nn.Linear(10, 7)
        elif kind == "groupnorm":
            self.layers = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(3, 6),
                                        nn.GELU(), nn.Conv2d(6, 6, 3, stride=2),
                                        nn.GroupNorm(2, 6, affine=True), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Linear(6, 7))
        elif kind == "direct":  # ViT's token path: cls token, position embedding, LayerScale
            self.patch = nn.Conv2d(3, 8, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.pos = nn.Parameter(torch.randn(1, 10, 8))
            self.gamma = nn.Parameter(torch.randn(8))
            self.gamma2 = nn.Parameter(torch.randn(8))
            self.fc = nn.Linear(8, 7)
        elif kind == "derived":  # weights computed from parameters: scaled, standardised, cast
            self.conv = nn.Conv2d(3, 6, 3, stride=2)
            self.gain = nn.Parameter(torch.rand(6, 1, 1, 1) + 0.5)
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 7)
        elif kind == "shared":  # one Linear used twice (accumulates), one parameter unused
            self.fc = nn.Linear(3 * SIZE * SIZE, 3 * SIZE * SIZE)
            self.out = nn.Linear(3 * SIZE * SIZE, 7)
            self.unused = nn.Parameter(torch.randn(5))
        self.width = 7 if kind != "conv1d" else 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            t = self.patch(x).flatten(2).transpose(1, 2)  # [B, 9, 10]
            return self.fc(self.norm2(self.norm(t))).mean(1)
        if self.kind == "direct":
            t = self.patch(x).flatten(2).transpose(1, 2)  # [B, 9, 8]
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            t = t + torch.nn.functional.gelu(t) * self.gamma
            t = t.clone().mul_(self.gamma2.reshape(1, 1, -1))
            return self.fc(t)[:, 0]
        if self.kind == "derived":
            w = self.conv.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)
            h = torch.conv2d(x, w * self.gain, self.conv.bias, 2).mean((2, 3))
            h = torch.nn.functional.layer_norm(h, (6,), self.norm.weight.float(), self.norm.bias)
            return torch.nn.functional.linear(h, self.fc.weight * 2, self.fc.bias)
        if self.kind == "shared":
            h = x.flatten(1)
            return self.out(self.fc(torch.tanh(self.fc(h))) + h)
        return self.layers(x)


def _detector(backbone: nn.Module, width: int) -> Detector:
    torch.manual_seed(0)
    return Detector(backbone, width, proj_depth=1, proj_width=6).train()


def _rows_by_autograd(model, fg, x, amp):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        losses = stream_losses(model(x))
    grads = [torch.autograd.grad(loss, fg.params, retain_graph=True, allow_unused=True)
             for loss in losses]
    return [[torch.zeros_like(p) if g is None else g for p, g in zip(fg.params, row,
                                                                   strict=True)]
            for row in grads]


def _check(model, n, channels_last=False, amp=False, size=SIZE):
    x = torch.randn(3 * n, 3, size, size, generator=torch.Generator().manual_seed(n))
    if channels_last:  # as the trainer does: before the buffer's views are made
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fg = FlatGrads(model.theta(), model.theta_p(), k=2)
    sg = StreamGrads(model, fg, "one-pass", img_size=size, channels_last=channels_last)
    assert sg.method == "one-pass"
    expect = _rows_by_autograd(model, fg, x, amp)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        losses = stream_losses(sg.forward(x))
    fg.buf.fill_(float("nan"))  # every entry is written (or zeroed): nothing stale survives
    sg.backward(losses)
    for row in range(2):  # per parameter: the buffer holds channels_last ones as laid out
        got = torch.cat([v.reshape(-1) for v in fg.rows[row]])
        want = torch.cat([g.reshape(-1) for g in expect[row]])
        if amp:  # bf16 matmuls on both sides, in different orders
            assert (got - want).norm() <= 3e-2 * want.norm()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(fg.params, fg.rows[0],
                                                                 strict=True))


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d", "layernorm", "groupnorm",
                                  "direct", "shared", "derived"])
def test_one_pass_equals_autograd_per_loss(kind, n):
    toy = Toy(kind)
    _check(_detector(toy, toy.width), n)


@pytest.mark.parametrize("kind", ["conv2d", "groupnorm", "direct"])
def test_one_pass_channels_last(kind):
    toy = Toy(kind)
    _check(_detector(toy, toy.width), 3, channels_last=True)


@pytest.mark.parametrize("kind", ["linear", "conv2d", "layernorm", "groupnorm", "direct"])
def test_one_pass_under_bf16_autocast(kind):
    toy = Toy(kind)
    _check(_detector(toy, toy.width), 3, amp=True)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224",
                                  "convnext_atto", "test_efficientnet_gn", "test_nfnet"])
def test_one_pass_on_timm_backbones(name):
    kw = {"img_size": 32} if "vit" in name or "deit" in name else {}
    torch.manual_seed(0)
    backbone = timm.create_model(name, num_classes=0, **kw)
    _check(_detector(backbone, backbone.num_features), 3, size=32)


def test_batchnorm_backbone_falls_back_or_fails_naming_the_layer(capsys):
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    model = _detector(backbone, 4)
    assert mixing_layers(model.backbone) == ["1 (BatchNorm2d in training mode)"]
    fg = FlatGrads(model.theta(), model.theta_p(), k=2)
    sg = StreamGrads(model, fg, "auto", img_size=SIZE)
    assert sg.method == "two-pass" and "BatchNorm2d in training mode" in sg.why_not
    assert "two backward passes" in capsys.readouterr().err
    StreamGrads(model, fg, "auto", img_size=SIZE)  # the message is shown once per process
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match=r"one-pass is not valid.*1 \(BatchNorm2d"):
        StreamGrads(model, fg, "one-pass", img_size=SIZE)
    model.backbone.eval()  # eval BatchNorm is no mixing, but an op one-pass does not split
    assert mixing_layers(model.backbone) == []
    with pytest.raises(ValueError, match="batch_norm"):
        StreamGrads(model, fg, "one-pass", img_size=SIZE)


class _Matmul(nn.Module):  # a parameter used by an op the mechanism does not know
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3 * SIZE * SIZE, 5))

    def forward(self, x):
        return x.flatten(1) @ self.w


class _BatchMean(nn.Module):  # mixes rows without any parameter: only the probe can tell
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, 5)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return h - h.mean(0, keepdim=True)


class _SamePadding(nn.Module):  # padding="same": the per-group weight gradient needs numbers
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding="same")

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class _Untracked(nn.Module):  # a linear whose weight is an activation, with a parameter bias
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = x.flatten(1)
        return torch.nn.functional.linear(h, h[:5] * 1.0, self.b)


class _DroppedBias(nn.Module):  # dropout on a parameter: per-group recomputations would differ
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, 5)
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.fc(x.flatten(1)) + torch.nn.functional.dropout(self.b, 0.5, self.training)


@pytest.mark.parametrize("backbone,why", [
    (_DroppedBias, "backbone.b goes through dropout"),
    (_Matmul, "backbone.w used by .*matmul"),
    (_BatchMean, "differs from two backward passes"),
    (_SamePadding, "padding 'same'"),
    (_Untracked, "weight of linear next to a parameter is neither")])
def test_what_one_pass_cannot_split_is_never_used(backbone, why, capsys):
    model = _detector(backbone(), 5)
    fg = FlatGrads(model.theta(), model.theta_p(), k=2)
    sg = StreamGrads(model, fg, "auto", img_size=SIZE)
    assert sg.method == "two-pass"
    assert why.split(".*")[-1] in capsys.readouterr().err
    with pytest.raises(ValueError, match=why):
        StreamGrads(model, fg, "one-pass", img_size=SIZE)
    # the probe left nothing behind: the rows are zero and every .grad views row 0
    assert not fg.buf.any()
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(fg.params, fg.rows[0],
                                                                 strict=True))


def test_grouped_forward_needs_three_equal_groups():
    toy = Toy("linear")
    fg = FlatGrads(toy.named_parameters(), (), k=2)
    with pytest.raises(ValueError, match="3 equal row groups"):
        GroupedForward(RowSink(fg.params, fg.rows, {}), 7)


def test_no_temporary_of_the_buffers_size():
    """The one-pass backward allocates nothing as large as one row of the buffer (P floats):
    group sums are per parameter, written into the rows at once."""
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    model = _detector(backbone, backbone.num_features)
    fg = FlatGrads(model.theta(), model.theta_p(), k=2)
    sg = StreamGrads(model, fg, "one-pass", img_size=32)
    x = torch.randn(6, 3, 32, 32)
    for profile in (False, True):
        losses = stream_losses(sg.forward(x))
        if not profile:
            sg.backward(losses)  # warm-up
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            sg.backward(losses)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    row = fg.numel * 4
    assert 0 < largest < row // 4, f"an allocation of {largest} bytes (row: {row})"


# --- in the trainer ------------------------------------------------------------------------------
VIT = {"backbone": "test_vit", "img_size": 32}  # timm's 0.3M-parameter ViT


def test_trainer_step_one_pass_applies_the_strategy_gradient(bench, tmp_path):
    """mode csdfd on a ViT: the step runs one-pass and applies UVS/CGR of the true g1, g2."""
    trainer = Trainer(_cfg(**VIT, tau=30.0), tmp_path, bench, quiet=True)
    assert trainer.grads.method == "one-pass"
    batch = StepDataset(bench, trainer.blend, 4, 32, 0, 0, (1, 2))[0]
    trainer._step(batch)
    g = _grads(trainer.model, batch, trainer)
    two = Trainer(_cfg(**VIT, tau=30.0, stream_grads="two-pass"), tmp_path / "two", bench,
                  quiet=True)
    assert two.grads.method == "two-pass"
    two.model.load_state_dict(trainer.model.state_dict())
    two._step(batch)
    torch.testing.assert_close(trainer.fg.buf[1], two.fg.buf[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(trainer.fg.buf[0], two.fg.buf[0], rtol=1e-3, atol=1e-6)
    # row 1 still holds g2 after the op (the op writes row 0): the definition, by autograd
    view = {id(p): v for p, v in zip(trainer.fg.params, trainer.fg.rows[1], strict=True)}
    got = torch.cat([view[id(p)].reshape(-1) for p in trainer.model.parameters()])
    torch.testing.assert_close(got, g[1], rtol=1e-4, atol=1e-7)


def test_os_between_logging_steps_is_one_plain_backward(bench, tmp_path):
    """OS needs g1 and g2 apart only to log their cosine: other steps run one backward of
    L1 + L2 (counted by a gradient hook), and apply exactly that sum."""
    trainer = Trainer(_cfg(mode="OS", log_every=2), tmp_path, bench, quiet=True)
    assert trainer.grads.method == "two-pass"  # test_efficientnet has BatchNorm
    calls = []
    first = next(iter(trainer.model.backbone.parameters()))
    first.register_hook(lambda grad: calls.append(1))
    batch = StepDataset(bench, trainer.blend, 4, 32, 0, 0, (1, 2))[0]
    _, stats, norm, _ = trainer._step(batch)  # step 1: not a logging step
    assert len(calls) == 1 and stats is None and norm > 0
    applied = torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])
    torch.testing.assert_close(applied, _grads(trainer.model, batch, trainer).sum(0),
                               rtol=2e-4, atol=1e-6)
    calls.clear()
    trainer.global_step = 1  # step 2 logs: both stream gradients, then their sum
    _, stats, norm, _ = trainer._step(batch)
    assert len(calls) == 2 and stats is not None and norm is None


def test_one_pass_run_resumes_bit_exact(bench, tmp_path):
    cfg = _cfg(**VIT, **RESUME, stream_grads="one-pass")
    straight = Trainer(cfg, tmp_path / "straight", bench, quiet=True)
    ref = (straight.fit(), straight.model.state_dict(), straight.opt.state_dict())
    assert ref[0]["stream_grads"] == "one-pass"
    Trainer(cfg, tmp_path / "resumed", bench, quiet=True).fit(stop_after=2)
    resumed = Trainer(cfg, tmp_path / "resumed", bench, resume=tmp_path / "resumed" / "last.pt",
                      quiet=True)
    _assert_same_run(ref, (resumed.fit(), resumed.model.state_dict(), resumed.opt.state_dict()))
    assert _train_rows(tmp_path / "resumed") == _train_rows(tmp_path / "straight")


def test_compiled_backbone_gives_the_same_rows(bench, tmp_path):
    """--compile (torch.compile of the backbone, in place: the checkpoint keys do not change)
    with the fused op, one-pass then two-pass: the step's rows equal the eager run's."""
    kw = dict(VIT, stream_grads="one-pass", backend="auto")
    eager = Trainer(_cfg(**kw), tmp_path / "eager", bench, quiet=True)
    compiled = Trainer(_cfg(**kw, compile=True), tmp_path / "compiled", bench, quiet=True)
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    compiled.model.load_state_dict(eager.model.state_dict())
    batch = StepDataset(bench, eager.blend, 4, 32, 0, 0, (1, 2))[0]
    for one_pass in (True, False):
        for trainer in (eager, compiled):
            trainer.grads.one_pass = one_pass
            if not one_pass:  # first one plain backward (as OS between logging steps): the
                trainer.cfg.mode = "OS"  # compiled backward must still run twice next
                trainer.strategy, trainer.cfg.log_every = STRATEGIES["OS"], 1000
                trainer._step(batch)
                trainer.strategy, trainer.cfg.log_every = STRATEGIES["csdfd"], 1
            trainer._step(batch)
        torch.testing.assert_close(compiled.fg.buf, eager.fg.buf, rtol=1e-4, atol=1e-6)
