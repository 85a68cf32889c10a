"""Run-directory logging: ``metrics.jsonl``, the progress bar, optional TensorBoard, and the
device-side window of per-step values that is read back only every ``log_every`` steps.

Rows of ``metrics.jsonl`` (one JSON object per line, ``kind`` says which):

- ``"train"`` every ``log_every`` steps: ``L1``/``L2`` (mean of the window's finite steps),
  ``cos``/``cos_p`` (cosine of g1, g2 over theta / theta_p), ``mu``, ``alpha``, ``norms``,
  ``norms_p`` and ``status`` of the window's last step (csdfd.ops.stats.StepStats),
  ``grad_norm`` (single-stream modes), ``lr``, ``step_time`` (s), ``images_per_s``,
  ``skipped`` (non-finite steps so far); with CGR, ``cgr_cos``, ``cgr_eq24_rel`` and
  ``cgr_exact_rel`` (eq. 24's vs the exact correction, csdfd.cgr_exact) and, under
  ``cgr_grad=exact``, ``cgr_dropped`` (steps of the window whose exact term was dropped);
- ``"eval"`` after every epoch: validation and test metrics (see csdfd.trainer).

A train row covers the steps of one epoch since the previous row; after a resume, the first
row still averages every step of its window, from before and after the interruption.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm


class Window:
    """Sums of the per-stream losses over the steps since the last read, kept on the device so
    that a training step never waits for the host. Checkpoints carry it (:meth:`state_dict`),
    so that the first row after a resume averages the same steps as an uninterrupted run's."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros(2, device=self.device)
        self.count = torch.zeros(2, device=self.device)
        self.steps, self.images, self.elapsed = 0, 0, 0.0
        self.start()

    def start(self) -> None:
        """(Re)start the clock; time before it (``elapsed``) is kept, time in between is not."""
        self.t0 = time.perf_counter()

    def add(self, losses: list[torch.Tensor | None], images: int, finite: bool) -> None:
        self.steps += 1
        self.images += images
        if finite:
            for k, loss in enumerate(losses):
                if loss is not None:
                    self.loss_sum[k] += loss.detach()
                    self.count[k] += 1

    def read(self) -> dict:
        """Host copy of the window (one device read), then reset."""
        dt = self.elapsed + time.perf_counter() - self.t0
        host = torch.cat([self.loss_sum / self.count.clamp_min(1), self.count]).tolist()
        means, counts = host[:2], host[2:]
        row = {f"L{k + 1}": (means[k] if counts[k] else None) for k in range(2)}
        row["step_time"] = dt / max(self.steps, 1)
        row["images_per_s"] = self.images / dt if dt > 0 else None
        self.reset()
        return row

    def state_dict(self) -> dict:
        """The unread steps, for a checkpoint (a host copy: called only when saving)."""
        return {"loss_sum": self.loss_sum.cpu(), "count": self.count.cpu(), "steps": self.steps,
                "images": self.images, "elapsed": self.elapsed + time.perf_counter() - self.t0}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum = state["loss_sum"].to(self.device)
        self.count = state["count"].to(self.device)
        self.steps, self.images, self.elapsed = state["steps"], state["images"], state["elapsed"]
        self.start()


class RunLog:
    """Appends rows to ``OUT/metrics.jsonl`` (and TensorBoard if asked and installed)."""

    def __init__(self, out: Path, resume_step: int | None = None, tensorboard: bool = False,
                 quiet: bool = False):
        self.path = Path(out) / "metrics.jsonl"
        self.quiet = quiet
        if resume_step is None:
            self.path.write_text("")
        else:  # drop rows written after the checkpoint (a crash between saves)
            self.path.write_text("".join(
                line + "\n" for line in self.rows_text() if json.loads(line)["step"] <= resume_step
            ))
        self.tb = _tensorboard(Path(out) / "tb") if tensorboard else None

    def rows_text(self) -> list[str]:
        if not self.path.exists():
            return []
        return [ln for ln in self.path.read_text().splitlines() if ln.strip()]

    def rows(self) -> list[dict]:
        return [json.loads(ln) for ln in self.rows_text()]

    @staticmethod
    def read(out: str | Path) -> list[dict]:
        """The rows of ``OUT/metrics.jsonl`` of a finished or running run."""
        path = Path(out) / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]

    def write(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in _scalars(row):
                self.tb.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        return tqdm(total=total, initial=initial, desc=desc, disable=self.quiet,
                    dynamic_ncols=True, leave=False)

    def print(self, text: str, always: bool = False) -> None:
        """A line above the progress bar; ``--quiet`` keeps only the ``always`` ones."""
        if always or not self.quiet:
            tqdm.write(text)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("--tensorboard: the tensorboard package is not installed "
                      "(pip install tensorboard); logging to metrics.jsonl only", stacklevel=3)
        return None
    return SummaryWriter(str(path))


def _scalars(row: dict, prefix: str = ""):
    """Flatten a row into (name, number) pairs for TensorBoard."""
    for key, value in row.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (int, float)):
                    yield f"{prefix}{key}/{i}", v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value
