"""The trainer: every strategy, the gradient each one applies, bit-exact resume, Ctrl-C,
non-finite steps, the run directory and the command line on bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from csdfd import train as cli
from csdfd import trainer as trainer_module
from csdfd.checkpoint import load_checkpoint, load_model
from csdfd.config import load_yaml, resolve
from csdfd.data import synthetic
from csdfd.data.stream import StepDataset
from csdfd.inference import to_input
from csdfd.ops import dispatch, reference
from csdfd.plots import curves_figure
from csdfd.trainer import STRATEGIES, NonFiniteError, Trainer

SYNTH = {"synth_train_ids": 4, "synth_val_ids": 2, "synth_test_ids": 2, "synth_frames": 4,
         "synth_eval_frames": 2}
TINY = {"backbone": "test_efficientnet", "img_size": 32, "batch_size": 4, "proj_width": 16,
        "epochs": 1, "log_every": 1, "eval_batch_size": 64, "lr": 1e-3, **SYNTH}


@pytest.fixture(scope="module")
def bench():
    cfg = resolve(TINY)
    return synthetic.make_benchmark(synthetic.SyntheticSpec.from_config(cfg), verbose=False)


def _cfg(**kw):
    return resolve({**TINY, **kw})


def _rows(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == kind]


@pytest.mark.parametrize("mode", list(STRATEGIES))
def test_every_mode_trains_and_evaluates(mode, bench, tmp_path):
    result = Trainer(_cfg(mode=mode), tmp_path, bench, quiet=True).fit()
    assert result["status"] == "finished"
    assert set(result["test"]) == {"in-domain", *bench.targets}
    for res in result["test"].values():
        assert 0 <= res["auc"] <= 1 and res["n_real"] > 0 and res["n_fake"] > 0
    rows = _rows(tmp_path, "train")
    assert len(rows) == len(bench.train_real) // 4  # log_every=1: one row per step
    streams = STRATEGIES[mode].streams
    assert all((r["L1"] is not None) == (1 in streams) for r in rows)
    assert all((r["L2"] is not None) == (2 in streams) for r in rows)
    if len(streams) == 2:
        assert all(-1 <= r["cos"] <= 1 and len(r["mu"]) == 2 for r in rows)
    else:
        assert all(r["grad_norm"] > 0 and "cos" not in r for r in rows)
    assert all(r["images_per_s"] > 0 and r["step_time"] > 0 for r in rows)


def _grads(model, batch, trainer):
    """Per-stream gradients over all parameters by plain autograd on the same forward batch
    (the definition): one row per fake kind present in ``batch``."""
    keys = [k for k in ("xr", "xf", "xs") if k in batch]
    x = torch.cat([to_input(batch[k], trainer.mean, trainer.std, trainer.device) for k in keys])
    real, *fakes = model(x).split(len(batch["xr"]))
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(real))])
    params = [p for _, p in model.named_parameters()]
    out = []
    for fake in fakes:
        loss = F.binary_cross_entropy_with_logits(torch.cat([real, fake]), y)
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params,
                                                                         retain_graph=True)]))
    return torch.stack(out)


@pytest.mark.parametrize("backend", dispatch.backends("cpu"))
@pytest.mark.parametrize("mode", ["OS", "uvs", "cgr", "csdfd"])
def test_step_applies_the_strategy_gradient(mode, backend, bench, tmp_path):
    # tau = 0.01 moves phi's gradient by ~tau / P_phi relative (eq. 24), below fp32 noise of
    # this comparison; a large tau makes the CGR term visible, the wiring is the same.
    trainer = Trainer(_cfg(mode=mode, tau=30.0, backend=backend), tmp_path, bench, quiet=True)
    batch = StepDataset(bench, trainer.blend, 4, 32, 0, 0, (1, 2))[0]
    trainer._step(batch)
    applied = torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])
    g = _grads(trainer.model, batch, trainer)
    names = [n for n, _ in trainer.model.named_parameters()]
    sizes = [p.numel() for p in trainer.model.parameters()]
    is_phi = torch.cat([torch.full((s,), n.startswith("phi."))
                        for n, s in zip(names, sizes, strict=True)])
    c, tau = trainer.cfg.c, trainer.cfg.tau
    expect = g.sum(0)
    if mode == "uvs":
        expect = reference.uvs(g, c).v
    elif mode in ("cgr", "csdfd"):
        theta, phi = g[:, ~is_phi], g[:, is_phi]
        expect = expect.clone()
        expect[is_phi] = reference.cgr(phi[0], phi[1], tau)
        if mode == "csdfd":
            expect[~is_phi] = reference.uvs(theta, c).v
    torch.testing.assert_close(applied, expect, rtol=2e-4, atol=1e-6)
    if mode != "OS":  # the strategy really changes something
        assert not torch.allclose(applied, g.sum(0), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode", ["O", "S"])
def test_single_stream_step_is_the_plain_gradient(mode, bench, tmp_path):
    trainer = Trainer(_cfg(mode=mode), tmp_path, bench, quiet=True)
    assert trainer.fg is None
    streams = STRATEGIES[mode].streams
    batch = StepDataset(bench, trainer.blend, 4, 32, 0, 0, streams)[0]
    assert set(batch) == {"xr", "xf" if streams == (1,) else "xs"}
    trainer._step(batch)
    applied = torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])
    torch.testing.assert_close(applied, _grads(trainer.model, batch, trainer)[0],
                               rtol=2e-4, atol=1e-6)


#: log_every 3 over 4 steps per epoch: a row's window can straddle a mid-epoch interruption.
RESUME = {"epochs": 4, "drop_rate": 0.3, "log_every": 3}
TIMING = {"step_time", "images_per_s"}


@pytest.fixture(scope="module")
def straight(bench, tmp_path_factory):
    """Four epochs in one go: the reference for the resume tests (dropout on, so that the
    torch RNG state matters)."""
    out = tmp_path_factory.mktemp("straight")
    trainer = Trainer(_cfg(**RESUME), out, bench, quiet=True)
    return trainer.fit(), trainer.model.state_dict(), trainer.opt.state_dict(), out


def _train_rows(out):
    """The train rows of metrics.jsonl without the timings (which no two runs share)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(out, "train")]


def _assert_same_run(a, b):
    result_a, model_a, opt_a = a[:3]
    result_b, model_b, opt_b = b[:3]
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for pid, st in opt_a["state"].items():
        for key, value in st.items():
            assert torch.equal(value, opt_b["state"][pid][key]), (pid, key)
    skip = {"train_time_s", "wall_time_s", "out"}
    clean = lambda r: {k: v for k, v in r.items() if k not in skip}
    assert json.dumps(clean(result_a), sort_keys=True) == json.dumps(clean(result_b),
                                                                    sort_keys=True)


def test_two_plus_two_epochs_equal_four(bench, straight, tmp_path):
    first = Trainer(_cfg(**RESUME), tmp_path, bench, quiet=True).fit(stop_after=2)
    assert first["status"] == "stopped" and first["epoch"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    trainer = Trainer(_cfg(**RESUME), tmp_path, bench, resume=tmp_path / "last.pt", quiet=True)
    _assert_same_run(straight, (trainer.fit(), trainer.model.state_dict(),
                                trainer.opt.state_dict()))
    assert _train_rows(tmp_path) == _train_rows(straight[3])
    assert [r["step"] for r in _rows(tmp_path, "train")] == [3, 6, 9, 12, 15]


def test_ctrl_c_mid_epoch_then_resume_is_exact(bench, straight, tmp_path, monkeypatch):
    """Ctrl-C during step 5 (epoch 2): the run saves after that step and the resumed one ends
    bit for bit like the uninterrupted run. Row 6's window then holds step 5: the checkpoint
    carries it, so the resumed row 6 is the mean of steps 5 and 6, as in the straight run."""
    real_step = Trainer._step

    def interrupt_at_step_5(self, batch):
        if self.global_step == 4:  # the 5th step, the first of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", interrupt_at_step_5)
    first = Trainer(_cfg(**RESUME), tmp_path, bench, quiet=True).fit()
    assert first["status"] == "interrupted"
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 5)
    assert state["window"]["steps"] == 1
    monkeypatch.setattr(Trainer, "_step", real_step)
    trainer = Trainer(_cfg(**RESUME), tmp_path, bench, resume=tmp_path / "last.pt", quiet=True)
    _assert_same_run(straight, (trainer.fit(), trainer.model.state_dict(),
                                trainer.opt.state_dict()))
    assert _train_rows(tmp_path) == _train_rows(straight[3])


def _poison(trainer, bad_steps):
    """Make the logits NaN on the given global steps (a diverging model, simulated)."""
    forward = trainer.model.forward

    def poisoned(x):
        out = forward(x)
        if trainer.model.training and trainer.global_step in bad_steps:
            return out * float("nan")
        return out

    trainer.model.forward = poisoned


@pytest.mark.parametrize("mode", ["O", "csdfd"])
def test_nonfinite_steps_are_skipped_and_counted(mode, bench, tmp_path):
    trainer = Trainer(_cfg(mode=mode, epochs=2, max_nonfinite=3), tmp_path, bench, quiet=True)
    _poison(trainer, {1, 2})
    result = trainer.fit()
    assert result["status"] == "finished" and result["nonfinite_skipped"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert [r["skipped"] for r in _rows(tmp_path, "train")][:4] == [0, 1, 2, 2]


@pytest.mark.parametrize("mode", ["S", "csdfd"])
def test_nonfinite_in_a_row_stops_and_keeps_last_good_checkpoint(mode, bench, tmp_path):
    trainer = Trainer(_cfg(mode=mode, epochs=3, max_nonfinite=3), tmp_path, bench, quiet=True)
    per_epoch = len(bench.train_real) // 4
    _poison(trainer, set(range(per_epoch, 10 * per_epoch)))  # everything after epoch 1
    with pytest.raises(NonFiniteError, match="3 consecutive.*last good checkpoint.*epoch 1"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == per_epoch
    for name, value in trainer.model.state_dict().items():  # skipped steps moved nothing
        assert torch.equal(value, state["model"][name]), name


def test_tensorboard_is_optional(bench, tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard package is not installed"):
            result = Trainer(_cfg(tensorboard=True), tmp_path, bench, quiet=True).fit()
    else:
        result = Trainer(_cfg(tensorboard=True), tmp_path, bench, quiet=True).fit()
        assert any((tmp_path / "tb").iterdir())
    assert result["status"] == "finished"


def test_amp_and_channels_last(bench, tmp_path):
    result = Trainer(_cfg(amp=True, channels_last=True), tmp_path, bench, quiet=True).fit()
    assert result["status"] == "finished" and result["nonfinite_skipped"] == 0
    assert all(math.isfinite(r["auc"]) for r in result["test"].values())


def test_batch_larger_than_the_training_set_is_refused(bench, tmp_path):
    n = len(bench.train_real)
    with pytest.raises(ValueError, match=f"batch_size {n + 1} is larger than the {n} real "
                       f"training frames.*0 steps.*--batch-size {n} or less"):
        Trainer(_cfg(batch_size=n + 1), tmp_path / "run", bench, quiet=True)
    assert not (tmp_path / "run").exists()
    Trainer(_cfg(batch_size=n), tmp_path / "ok", bench, quiet=True)  # one step per epoch


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert cli.main(["--out", str(out), "--quiet", *_flags(TINY)]) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()

    def no_render(cfg):
        raise AssertionError("the data were rendered again")

    monkeypatch.setattr(trainer_module, "load_benchmark", no_render)
    assert cli.main(["--out", str(out), "--resume", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "is finished: 1 of 1 epochs" in said and "nothing was changed" in said
    assert "--epochs 2" in said
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="changed .'epochs'."):  # raised --epochs: continues
        assert cli.main(["--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["last_epoch"]["epoch"] == 2 and len(_rows(out, "eval")) == 2


def test_curves_have_an_auc_panel_and_markers_for_few_points():
    rows = [{"kind": "train", "step": 4, "epoch": 1, "L1": 0.6, "L2": 0.7, "cos": -0.2},
            {"kind": "eval", "epoch": 1, "step": 4, "val": {"auc": 0.7},
             "test": {"in-domain": {"auc": 0.8}, "blend": {"auc": 0.6}},
             "cross_domain_mean": {"auc": 0.6}}]
    fig = curves_figure({"csdfd": rows})
    try:
        loss, cos, auc = fig.axes
        assert [ln.get_label() for ln in auc.get_lines()] == ["val", "in-domain", "blend"]
        assert [ln.get_ydata()[0] for ln in auc.get_lines()] == [0.7, 0.8, 0.6]
        for ax in (loss, cos, auc):  # one point each: visible only as a marker
            data = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
            assert data and all(ln.get_marker() == "o" for ln in data)
    finally:
        plt.close(fig)
    fig = curves_figure({"O": rows, "csdfd": rows})  # a study: val + cross-domain mean per run
    try:
        assert [ln.get_label() for ln in fig.axes[2].get_lines()] == [
            "O: val", "O: cross-domain mean", "csdfd: val", "csdfd: cross-domain mean"]
    finally:
        plt.close(fig)


def test_run_directory(bench, tmp_path):
    cfg = _cfg(epochs=2)
    result = Trainer(cfg, tmp_path, bench, quiet=True).fit()
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "last.pt", "best.pt",
                 "results.json", "results.md"):
        assert (tmp_path / name).is_file(), name
    assert resolve(load_yaml(tmp_path / "config.yaml")) == cfg
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"] == result["test"] and saved["selected"]["by"] == "validation AUC"
    evals = _rows(tmp_path, "eval")
    best = max(evals, key=lambda r: r["val"]["auc"])  # first maximum: ties keep the earlier
    assert saved["selected"]["epoch"] == best["epoch"] and saved["test"] == best["test"]
    assert "| model | in-domain |" in (tmp_path / "results.md").read_text()
    model, loaded_cfg = load_model(tmp_path / "best.pt")
    assert loaded_cfg == cfg and not model.training
    fig = curves_figure({cfg.mode: _rows(tmp_path, "train") + evals})  # curves.png's panels
    try:
        names = [ln.get_label() for ln in fig.axes[2].get_lines()]
        assert names == ["val", "in-domain", *bench.targets]
        assert all(len(ln.get_xdata()) == 2 for ln in fig.axes[2].get_lines())  # two epochs
    finally:
        plt.close(fig)


def _main_exit(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code, capsys.readouterr().err


def test_cli_bad_inputs(tmp_path, capsys):
    code, err = _main_exit(["--backbone", "efficientnet_b44", "--out", str(tmp_path / "a")],
                           capsys)
    assert code == 2 and "unknown backbone 'efficientnet_b44'" in err and "efficientnet_b4" in err
    code, err = _main_exit(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b")],
                           capsys)
    assert code == 2 and "missing" in err and "does not exist" in err
    code, err = _main_exit(["--backend", "cuda", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "backend 'cuda' is unavailable" in err and "Available" in err
    if not torch.cuda.is_available():
        code, err = _main_exit(["--device", "cuda", "--out", str(tmp_path / "e")], capsys)
        assert code == 2 and "CUDA is not available" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # check first, then create OUT
    code, err = _main_exit([*_flags(TINY), "--batch-size", "99", "--out", str(tmp_path / "f")],
                           capsys)
    assert code == 2 and "batch_size 99 is larger than the 16 real training frames" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # check first, then create OUT
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "last.pt").write_bytes(b"")
    code, err = _main_exit(["--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    code, err = _main_exit(["--out", str(tmp_path / "c"), "--resume"], capsys)
    assert code == 2 and "is not a csdfd checkpoint: it is an empty file" in err


def _flags(d: dict) -> list[str]:
    return [s for k, v in d.items() for s in ("--" + k.replace("_", "-"), str(v))]


def test_cli_ctrl_c_saves_and_resumes(tmp_path):
    out = tmp_path / "run"
    argv = ["--fused", "--out", str(out), "--quiet", *_flags({**TINY, "epochs": 50})]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "csdfd.train", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"train"') >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    state = load_checkpoint(out / "last.pt")
    assert state["global_step"] >= 2 and "continue with --resume" in output
    assert cli.main(["--out", str(out), "--resume", "--epochs", str(state["epoch"] + 1),
                     "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "finished"
