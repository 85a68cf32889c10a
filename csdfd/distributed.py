"""Data parallelism under ``torchrun`` for the two-stream step (METHOD.md section 7).

With R ranks the global batch is R x ``batch_size`` reals (and as many fakes and self-blends);
rank r trains on a disjoint shard of every step's global batch (:class:`csdfd.data.stream.
StepDataset`). Stream k's loss is its mean over the global batch, so the global gradient is the
mean over ranks of the local ones: g_k = (1/R) sum_r g_k^(r).

``dist_uvs = "exact"`` (default): UVS (eqs. 11-16) and CGR (eq. 24) are not linear in the g_k:
the Gram matrix G_ij = g_i . g_j of the global gradients is not the mean of the ranks' local Gram
matrices. So the whole [K, P] buffer is all-reduced, once per step: row k's all-reduce starts
(async) as soon as row k's backward ends, and runs while row k+1's backward does; then every rank
runs the same deterministic fused op on the same bytes, and the parameters stay bitwise identical
across ranks. Traffic: K x P values per step (K = 2: twice a plain DDP step).

``dist_uvs = "local"``: each rank applies UVS/CGR to its local rows, and only the combined row 0
is averaged: P values per step, as plain DDP. This is an approximation: the mean of per-rank
conflict-averse updates is not the update of the mean gradients (``bench/bench_dist.py``
measures the cosine and relative norm between the two).

The model is not wrapped in DistributedDataParallel: its hooks would reduce each stream's
backward a second time. The non-finite skip decision is reduced (max) across ranks, so every
rank skips the same steps. BatchNorm statistics are per rank as in DDP (the running buffers of
rank 0 are broadcast before every evaluation, which is what DDP's per-forward broadcast amounts
to), or synchronised with ``sync_bn`` (torch.nn.SyncBatchNorm, GPU only). Only rank 0 writes.

A rank that dies makes a collective of the others fail (gloo: the peer's socket closes; any
backend: the process-group timeout ``dist_timeout``); ``_guard`` then names the rank(s) that
stopped answering, found through the rendezvous store.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import inference
from .metrics import frame_metrics


class RankFailure(RuntimeError):
    """Another rank stopped answering (died, or hung past the timeout)."""


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class DataParallel:
    """Rank info and every collective of one training run; with one process, a no-op.

    Created once per :class:`csdfd.trainer.Trainer`. Without torchrun (WORLD_SIZE unset or 1)
    no process group is created and every method returns its input unchanged.
    """

    def __init__(self, mode: str = "exact", timeout_s: float = 300.0, device: str = "cpu"):
        self.mode, self.timeout = mode, timedelta(seconds=timeout_s)
        self.world = env_world_size()
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        self.works: list = []
        self.overlap = True  # False: one blocking all-reduce after both backwards (bench only)
        self.monitor = None
        if self.active and not dist.is_initialized():
            cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            if cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if cuda else "gloo", timeout=self.timeout)
        if self.active:
            self.monitor = dist.new_group(backend="gloo", timeout=self.timeout)

    @property
    def main(self) -> bool:
        """True on the rank that writes (rank 0, or the only process)."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    # --- setup ---------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, sync_bn: bool) -> torch.nn.Module:
        """SyncBatchNorm if asked, then rank 0's parameters and buffers on every rank."""
        if not self.active:
            return model
        if sync_bn:
            if next(model.parameters()).device.type != "cuda":
                raise ValueError("--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA "
                                 "only); on CPU drop --sync-bn: BatchNorm statistics stay per "
                                 "rank, or use a backbone without BatchNorm")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        with self._guard():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, 0)
        return model

    # --- the step ------------------------------------------------------------------------------
    def row_hook(self, buf: torch.Tensor):
        """exact mode: the callback for :meth:`FlatGrads.backward` that starts row k's async
        all-reduce when row k's backward is done (None otherwise)."""
        if not self.active or self.mode != "exact" or not self.overlap:
            return None

        def start(row: int) -> None:
            with self._guard():
                self.works.append(dist.all_reduce(buf[row], async_op=True))

        return start

    def before_op(self, buf: torch.Tensor) -> None:
        """exact mode: wait for the rows' all-reduces, then sum -> mean over ranks."""
        if self.active and self.mode == "exact" and not self.overlap:
            for row in buf:
                self.mean_(row)
            return
        if not self.works:
            return
        with self._guard():
            for work in self.works:
                work.wait()
        self.works.clear()
        buf.div_(self.world)

    def after_op(self, buf: torch.Tensor) -> None:
        """local mode: the mean over ranks of the locally combined row 0."""
        if self.active and self.mode == "local":
            self.mean_(buf[0])

    def mean_(self, t: torch.Tensor) -> None:
        """t <- mean over ranks of t, in place (blocking)."""
        with self._guard():
            dist.all_reduce(t)
        t.div_(self.world)

    def mean_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Single-stream modes (O, S): the mean gradient over ranks, one flat all-reduce."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        self.mean_(flat)
        for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(f)

    def any(self, bad: torch.Tensor) -> torch.Tensor:
        """The skip decision of all ranks: True on every rank if it is True on one."""
        if not self.active:
            return bad
        flag = bad.to(torch.int32).reshape(1)
        with self._guard():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag[0] != 0

    # --- evaluation ----------------------------------------------------------------------------
    def evaluate_sets(self, model, sets: dict, *args) -> dict[str, dict[str, float]]:
        """:func:`csdfd.inference.evaluate_sets`, sharded: rank r predicts frames r, r + R, ...;
        the scores are gathered in frame order, so every rank gets a single process's metrics."""
        if not self.active:
            return inference.evaluate_sets(model, sets, *args)
        with self._guard():
            for b in model.buffers():  # rank 0's BatchNorm statistics (DDP's convention)
                dist.broadcast(b.data, 0)
        out = {}
        for name, frames in sets.items():
            shard = _Shard(frames, np.arange(self.rank, len(frames), self.world))
            scores = inference.predict(model, shard, *args)
            gathered: list = [None] * self.world
            with self._guard():
                dist.all_gather_object(gathered, scores, group=self.monitor)
            full = np.zeros(len(frames))
            for r, part in enumerate(gathered):
                full[r::self.world] = part
            out[name] = frame_metrics(frames.labels, full)
        return out

    # --- failures ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn a failed collective into RankFailure naming the rank(s) that stopped."""
        try:
            yield
        except RankFailure:
            raise
        except (RuntimeError, dist.DistError) as exc:
            raise RankFailure(f"rank {self.rank}: a collective failed; {self._who()} "
                              f"(first error: {str(exc).splitlines()[0][:200]})") from exc

    def _who(self, grace_s: float = 5.0) -> str:
        """The ranks that do not answer: every surviving rank sets a key in the rendezvous
        store (torchrun's agent, or rank 0 without it) and looks for the others' keys."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"csdfd/alive/{self.rank}", "1")
            deadline = time.monotonic() + grace_s
            while True:
                missing = [r for r in range(self.world)
                           if not store.check([f"csdfd/alive/{r}"])]
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        except Exception:  # noqa: BLE001 - the store itself is gone with the rank holding it
            return "failed rank(s): [0] (its rendezvous store does not answer)"
        if missing:
            return f"failed rank(s): {missing} (no answer within {grace_s:g} s)"
        return "every rank still answers (a collective failed for another reason)"

    def close(self) -> None:
        """Destroy the process group (created by this object or by the caller)."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class _Shard:
    """Frames ``idx`` of a frame set, with the interface :func:`inference.predict` reads."""

    def __init__(self, frames, idx: np.ndarray):
        self.frames, self.idx = frames, idx

    def __len__(self) -> int:
        return len(self.idx)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self.frames.images(self.idx[idx])


class NullLog:
    """The run log of ranks other than 0: writes nothing, prints nothing."""

    def write(self, row: dict) -> None:
        pass

    def print(self, text: str, always: bool = False) -> None:
        pass

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        return tqdm(total=total, initial=initial, disable=True)

    def rows(self) -> list[dict]:
        return []

    def close(self) -> None:
        pass
