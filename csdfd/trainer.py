"""The CS-DFD training loop: paper Algorithm 1, one step at a time (:meth:`Trainer._step`).

1. One forward of ``cat([xr, xf, xs])``: features, projection phi, logits;
   ``L1`` = BCE over ``[xr, xf]`` (stream 1), ``L2`` = BCE over ``[xr, xs]`` (stream 2), eq. 3.
2. Per-stream gradients ``g1``, ``g2`` of all trainable parameters, into the rows of one flat
   [2, P] buffer (:class:`csdfd.FlatGrads`: each ``.grad`` is a view, nothing is copied).
3. One op on the buffer: CGR on theta_p = phi's parameters (eq. 24) and UVS on theta =
   everything else (mu* by eq. 16, v* by eq. 14), written in place into row 0.
4. Optimizer step on row 0 (every ``.grad`` points there).

Strategies (paper Tables II and III) differ only in the streams and in c and tau of step 3:

====== ======= ============================================================================
mode   streams gradient
====== ======= ============================================================================
O      1       dL1 (no buffer; plain backward)
S      2       dL2 (no buffer; plain backward)
OS     1, 2    g1 + g2 everywhere: step 3 with c = 0 (v* = g0, eq. 14) and tau = 0 (eq. 24)
uvs    1, 2    UVS over all parameters, phi included (no CGR segment), c = cfg.c
cgr    1, 2    g1 + g2 on theta (c = 0), CGR on phi (tau = cfg.tau)
csdfd  1, 2    UVS on theta (c = cfg.c), CGR on phi (tau = cfg.tau): the method
====== ======= ============================================================================

Every mode keeps the same network (backbone, phi, classifier), so they differ only in how it is
updated. With c = 0 the mu loop is skipped (0 iterations): the trust region of eq. 11 is one
point and v* = g0 exactly.

Non-finite policy: a step whose loss or gradient is not finite (the op's NONFINITE flag, or
``isfinite`` of the losses / single-stream gradient norm) is skipped (no optimizer update) and
counted, and the BatchNorm statistics its forward pass moved are restored (the buffers are
copied aside before every step: a few kB, one fused copy); ``max_nonfinite`` in a row stop the
run with NonFiniteError, leaving the last good checkpoint untouched. Deciding to skip needs one
1-element host read per step: free on CPU; on a GPU it is one synchronisation per step, the
same one ``torch.amp.GradScaler`` makes (``found_inf``), which costs the overlap of the next
step's launches with this step's tail. Losses and UVS/CGR diagnostics are read only every
``log_every`` steps (runlog.Window).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cgr_exact import CGRGradient
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, dump_yaml
from .cpumem import keep_freed_memory
from .data import Benchmark, BlendedFrames, ConcatFrames, get_blend, load_benchmark
from .data.stream import StepDataset, step_loader
from .distributed import DataParallel, NullLog
from .flatgrads import FlatGrads
from .inference import to_input
from .metrics import mean_over
from .models import build_model, compile_backbone, normalisation
from .ops import dispatch
from .ops.stats import NONFINITE
from .optim import build_optimizer, build_scheduler
from .plots import plot_curves
from .report import IN_DOMAIN, table, write_results
from .runlog import RunLog, Window
from .steputil import GracefulStop as _GracefulStop
from .steputil import copy_ as _copy
from .steputil import pick_device as _device
from .steputil import total_norm as _total_norm
from .streamgrads import StreamGrads, stream_losses


@dataclass(frozen=True)
class Strategy:
    streams: tuple[int, ...]  # 1: [xr, xf], 2: [xr, xs]
    uvs: bool  # use c (else c = 0: v* = g1 + g2)
    cgr: bool  # use tau on phi (else tau = 0: phi gets g1 + g2)
    phi_segment: bool  # phi is the CGR segment theta_p (else UVS covers it too)


STRATEGIES = {
    "O": Strategy((1,), False, False, False),
    "S": Strategy((2,), False, False, False),
    "OS": Strategy((1, 2), False, False, True),
    "uvs": Strategy((1, 2), True, False, False),
    "cgr": Strategy((1, 2), False, True, True),
    "csdfd": Strategy((1, 2), True, True, True),
}


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


class Trainer:
    """Owns the model, optimizer, data and run directory of one training run."""

    def __init__(self, cfg: Config, out: str | Path, bench: Benchmark | None = None,
                 resume: str | Path | None = None, quiet: bool = False):
        self.cfg, self.out, self.quiet = cfg, Path(out), quiet
        self.dp = DataParallel(cfg.dist_uvs, cfg.dist_timeout, cfg.device)  # no-op alone
        self.device = self.dp.device(_device(cfg.device))
        if cfg.keep_cpu_memory and self.device.type == "cpu":
            keep_freed_memory()  # each step reuses the last one's pages (csdfd.cpumem)
        self.strategy = st = STRATEGIES[cfg.mode]
        self.backend = dispatch.resolve(cfg.backend, self.device)
        self.c, self.tau = (cfg.c if st.uvs else 0.0), (cfg.tau if st.cgr else 0.0)
        self.iters = cfg.mu_iters if st.uvs else 0  # c = 0: mu is irrelevant, skip the loop
        self.blend = get_blend(cfg.blend)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(self.device)  # before the data: bad names fail fast
        self.model = self.dp.prepare(self.model, cfg.sync_bn)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.mean, self.std = normalisation(self.model)
        self.fg = self._flat_grads()
        self.grads = None if self.fg is None else StreamGrads(  # g1, g2: one backward or two
            self.model, self.fg, cfg.stream_grads, img_size=cfg.img_size,
            channels_last=cfg.channels_last,
            log=(lambda m: None) if quiet or not self.dp.main else None)
        if cfg.compile:  # in place (state_dict keys unchanged), after the eager probe above
            compile_backbone(self.model)
        self.bench = bench if bench is not None else load_benchmark(cfg)
        self.steps_per_epoch = _steps_per_epoch(self.bench, cfg.batch_size * self.dp.world)
        # torchrun, exact: the term of the global stream gradients (csdfd.cgr_exact)
        reduce = self.dp.mean_ if self.dp.active and self.dp.mode == "exact" else None
        self.cgr = CGRGradient(self.fg, st.cgr, cfg.cgr_grad, self.tau, cfg.cgr_weight, reduce)
        # BatchNorm statistics move during the forward pass; a skipped step restores them.
        self.buffers = list(self.model.buffers())
        self.buffers_saved = [b.clone() for b in self.buffers]
        self.opt = build_optimizer(cfg, self.model)
        self.sched = build_scheduler(cfg, self.opt, cfg.epochs * self.steps_per_epoch)
        self.eval_sets = self._eval_sets()
        self.epoch = self.step = self.global_step = self.skipped = self.consecutive = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.train_time = 0.0
        self.window = Window(self.device)  # losses since the last train row (runlog.Window)
        if resume is not None:
            self._restore(load_checkpoint(resume, self.device))
        # Every check above can fail; only now is OUT created, so a failed setup leaves no
        # empty run folder behind (and nothing that was in OUT is touched before this line).
        self.log = NullLog()  # only rank 0 writes (csdfd.distributed)
        if self.dp.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log = RunLog(self.out, self.global_step if resume else None, cfg.tensorboard,
                              quiet)
            dump_yaml(cfg, self.out / "config.yaml")

    def _flat_grads(self) -> FlatGrads | None:
        """The [2, P] buffer of the two-stream modes; phi is its CGR segment when it has one."""
        if len(self.strategy.streams) == 1:
            return None
        if self.strategy.phi_segment:
            return FlatGrads(self.model.theta(), self.model.theta_p(), k=2)
        return FlatGrads(self.model.named_parameters(), (), k=2)

    def _eval_sets(self) -> dict:
        """Validation (selection only) + in-domain test + each cross-domain target."""
        val = self.bench.val
        if self.cfg.val_blend and self.bench.val_real is not None:
            val = ConcatFrames([val, BlendedFrames(self.bench.val_real, self.blend,
                                                   self.cfg.seed)])
        return {"val": val, IN_DOMAIN: self.bench.test, **self.bench.targets}

    # --- Algorithm 1 ---------------------------------------------------------------------------
    def _step(self, batch: dict) -> tuple[list, object, torch.Tensor | None, torch.Tensor]:
        """One training step up to (not including) the optimizer; returns the per-stream
        losses [L1 | None, L2 | None], the UVS/CGR stats, the gradient norm of single-stream
        modes, and a 0-dim bool tensor that is True when the step must be skipped."""
        cfg, st = self.cfg, self.strategy
        x = [to_input(batch[k], self.mean, self.std, self.device, cfg.channels_last)
             for k in ("xr", "xf", "xs") if k in batch]
        n = len(x[0])
        log_step = (self.global_step + 1) % cfg.log_every == 0
        # OS needs g1 and g2 apart only for the cosine it logs: else one backward of L1 + L2
        split = self.fg is not None and (st.uvs or st.cgr or log_step)
        # Step 1: one forward of [xr, xf, xs] -> features -> phi -> logits
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = (self.grads.forward(torch.cat(x), split) if self.fg is not None
                      else self.model(torch.cat(x))).float()
        per_stream = stream_losses(logits, n)  # eq. 3
        losses: list = [None, None]
        for s, loss in zip(st.streams, per_stream, strict=True):
            losses[s - 1] = loss
        if not split:  # O, S, or OS between logging steps: one plain backward
            loss = sum(per_stream)
            if self.fg is None:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            else:  # OS: L1 + L2 straight into row 0, which every .grad views
                self.fg.backward_sum(loss)
            self.dp.mean_grads(self.model.parameters())
            norm = _total_norm(self.model.parameters())
            return losses, None, norm, ~torch.isfinite(loss + norm)
        # Step 2: g1 and g2 into rows 0 and 1 of the flat buffer, by one backward of L1 + L2
        # or one per stream (csdfd.streamgrads); first, while the graph is alive, the exact
        # dL_phi/dtheta_p when cgr_grad=exact or on logging steps
        self.cgr.prepare(per_stream, log_step)
        self.grads.backward(per_stream, self.dp.row_hook(self.fg.buf))  # + async all-reduce
        self.dp.before_op(self.fg.buf)  # torchrun, exact: the global rows (csdfd.distributed)
        self.cgr.compare()
        # Step 3: CGR on theta_p (eq. 24, or tau = 0 plus the exact term), UVS on theta
        # (eqs. 14-16), in place into row 0
        stats = self.fg.step(self.c, self.cgr.op_tau, cfg.solver, self.iters, self.backend)
        self.cgr.apply()
        self.dp.after_op(self.fg.buf)  # torchrun, local: the mean of the ranks' row 0
        bad = ~torch.isfinite(per_stream[0] + per_stream[1])
        bad |= (stats.status.to(torch.int32) & NONFINITE) != 0
        return losses, stats, None, bad

    def _train_epoch(self, stop: _GracefulStop) -> None:
        cfg = self.cfg
        ds = StepDataset(self.bench, self.blend, cfg.batch_size, cfg.img_size, cfg.seed,
                         self.epoch, self.strategy.streams, cfg.hflip, self.dp.rank, self.dp.world)
        bar = self.log.bar(len(ds), self.step, f"epoch {self.epoch + 1}/{cfg.epochs}")
        if self.step == 0:  # a train row covers steps of one epoch; mid-epoch: the restored one
            self.window = Window(self.device)
        window = self.window
        window.start()
        t0 = time.perf_counter()
        for batch in step_loader(ds, self.step, cfg.workers):
            _copy(self.buffers_saved, self.buffers)
            losses, stats, norm, bad = self._step(batch)
            finite = not bool(self.dp.any(bad))  # the one per-step host read (max over ranks)
            if finite:
                self.opt.step()  # Step 4
                self.consecutive = 0
            else:
                _copy(self.buffers, self.buffers_saved)
                self._count_nonfinite()
            self.sched.step()
            self.step += 1
            self.global_step += 1
            window.add(losses, len(batch) * cfg.batch_size * self.dp.world, finite)
            bar.update()
            if self.global_step % cfg.log_every == 0:
                bar.set_postfix(self._log_train(window, stats, norm), refresh=False)
            if stop.requested:
                break
        bar.close()
        self.train_time += time.perf_counter() - t0

    def _count_nonfinite(self) -> None:
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.cfg.max_nonfinite:
            last = self.out / "last.pt"
            kept = (f"the last good checkpoint {last} (epoch {self.history[-1]['epoch']}) is kept"
                    if self.history and last.exists() else "no checkpoint had been written yet")
            raise NonFiniteError(
                f"stopping: {self.consecutive} consecutive training steps had a non-finite loss "
                f"or gradient (epoch {self.epoch + 1}, step {self.step + 1}; {self.skipped} "
                f"skipped in total); {kept}. Try a lower --lr, or toggle --amp."
            )

    def _log_train(self, window: Window, stats, norm) -> dict:
        row = {"kind": "train", "step": self.global_step, "epoch": self.epoch + 1,
               **window.read(), "lr": self.sched.get_last_lr()[0], "skipped": self.skipped}
        if stats is not None:
            row.update(stats.to_dict())
            row.update(self.cgr.read())
        if norm is not None:
            row["grad_norm"] = float(norm)
        self.log.write(row)
        return {k: f"{row[k]:.3f}" for k in ("L1", "L2", "cos") if row.get(k) is not None}

    # --- epochs, evaluation, checkpoints -------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to ``cfg.epochs`` (or stop after epoch ``stop_after``); returns the results,
        or ``{"status": "interrupted" | "stopped", ...}`` with last.pt saved to resume from."""
        t_start = time.perf_counter()
        self.log.print(f"{self.bench.name} | {self.cfg.backbone} | mode {self.cfg.mode} | "
                       f"gradient ops backend: {self.backend} | device {self.device}" +
                       (f" | stream gradients: {self.grads.method}" if self.grads else ""))
        try:
            with _GracefulStop() as stop:
                while self.epoch < self.cfg.epochs:
                    if self.step < self.steps_per_epoch:
                        self._train_epoch(stop)
                    if self.step >= self.steps_per_epoch:
                        self._end_epoch()
                    if stop.requested or (stop_after is not None and self.epoch >= stop_after
                                          and self.epoch < self.cfg.epochs):
                        return self._pause("interrupted" if stop.requested else "stopped")
            return self._finish(time.perf_counter() - t_start)
        finally:
            self.log.close()

    def _end_epoch(self) -> None:
        res = self.dp.evaluate_sets(self.model, self.eval_sets, self.cfg.img_size,  # sharded
                                    self.cfg.eval_batch_size, self.cfg.amp, self.cfg.channels_last)
        val = res.pop("val")
        row = {"kind": "eval", "epoch": self.epoch + 1, "step": self.global_step, "val": val,
               "test": res, "cross_domain_mean": mean_over(res, list(self.bench.targets))}
        self.history.append(row)
        self.log.write(row)
        self.epoch, self.step = self.epoch + 1, 0
        improved = self.best is None or val["auc"] > self.best["val_auc"]
        if improved:  # selection on the validation split only, never on a test set
            self.best = {"epoch": row["epoch"], "val_auc": val["auc"]}
            self._save("best.pt")
        self._save("last.pt")
        self.log.print(f"epoch {row['epoch']}: val AUC {100 * val['auc']:.2f} | in-domain "
                       f"{100 * res[IN_DOMAIN]['auc']:.2f} | cross-domain mean "
                       f"{100 * row['cross_domain_mean']['auc']:.2f}" + (" *" if improved else ""))

    def _pause(self, status: str) -> dict:
        path = self._save("last.pt")
        self._plot()
        self.log.print(f"{status} at epoch {self.epoch + 1} step {self.step}: saved {path}; "
                       f"continue with --resume {path}", always=True)
        return {"status": status, "checkpoint": str(path), "epoch": self.epoch,
                "step": self.step}

    def _finish(self, wall: float) -> dict:
        best = self.history[self.best["epoch"] - 1]
        label = f"{self.cfg.backbone} ({self.cfg.mode})"
        result = {
            "status": "finished", "label": label, "benchmark": self.bench.name,
            "selected": {"epoch": best["epoch"], "by": "validation AUC", "val": best["val"]},
            "test": best["test"], "cross_domain_mean": best["cross_domain_mean"],
            "last_epoch": self.history[-1], "backend": self.backend,
            "stream_grads": self.grads.method if self.grads else None,
            "nonfinite_skipped": self.skipped, "train_time_s": self.train_time,
            "wall_time_s": wall, "config": self.cfg.to_dict(), "out": str(self.out),
            "world_size": self.dp.world, "global_batch": self.cfg.batch_size * self.dp.world,
        }
        if self.dp.main:
            write_results(self.out, label, result, f"CS-DFD results: {self.bench.name}")
        self._plot()
        self.log.print(f"\nTest AUC (%) of the checkpoint selected on validation (epoch "
                       f"{best['epoch']}):\n{table([(label, result)])}\n"
                       f"results: {self.out / 'results.md'}, curves: {self.out / 'curves.png'}",
                       always=True)
        return result

    def _save(self, name: str) -> Path:
        """Checkpoint OUT/name, on rank 0 only (every rank holds the same state)."""
        return save_checkpoint(self._state(), self.out / name) if self.dp.main else self.out / name

    def _plot(self) -> None:
        if not self.dp.main:
            return
        plot_curves({self.cfg.mode: self.log.rows()}, self.out / "curves.png",
                    f"{self.cfg.backbone} ({self.cfg.mode}): L1 = [xr, xf], L2 = [xr, xs]")

    def _state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "rng": rng, "history": self.history, "best": self.best,
                "nonfinite": {"skipped": self.skipped, "consecutive": self.consecutive},
                "train_time_s": self.train_time, "window": self.window.state_dict(),
                "world_size": self.dp.world}

    def _restore(self, state: dict) -> None:
        _check_global_batch(state, self.cfg.batch_size, self.dp.world)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.epoch, self.step = state["epoch"], state["step"]
        self.global_step = state["global_step"]
        self.history, self.best = state["history"], state["best"]
        self.skipped = state["nonfinite"]["skipped"]
        self.consecutive = state["nonfinite"]["consecutive"]
        self.train_time = state.get("train_time_s", 0.0)
        if "window" in state:  # older checkpoints: the first row after resume is partial
            self.window.load_state_dict(state["window"])


def _steps_per_epoch(bench: Benchmark, batch_size: int) -> int:
    """Full batches of real training frames per epoch (the last partial one is dropped);
    0 would "train" without a single step, so it is refused before anything starts."""
    n = len(bench.train_real)
    if n < batch_size:
        fix = f"use --batch-size {n} or less, or more training data" if n else "add some"
        raise ValueError(f"batch_size {batch_size} is larger than the {n} real training frames "
                         f"of {bench.name}: an epoch would have 0 steps; {fix}")
    return n // batch_size


def _check_global_batch(state: dict, batch_size: int, world: int) -> None:
    """A checkpoint resumes under any world size that keeps its global batch (then the steps
    and their content are the same: csdfd.data.stream); any other one is refused."""
    was_world = state.get("world_size", 1)
    was = state["config"]["batch_size"] * was_world
    if was != batch_size * world:
        fix = (f"pass --batch-size {was // world}" if was % world == 0
               else f"use a world size that divides {was}")
        raise ValueError(f"the checkpoint was trained with a global batch of {was} ({was_world} "
                         f"process(es) x {was // was_world}); this run's is {world} x {batch_size}"
                         f" = {batch_size * world}: {fix} to resume it")


def train(cfg: Config, out: str | Path, **kwargs) -> dict:
    """Run one training job (see :class:`Trainer`); ``kwargs``: bench, resume, quiet,
    stop_after."""
    stop_after = kwargs.pop("stop_after", None)
    return Trainer(cfg, out, **kwargs).fit(stop_after)
