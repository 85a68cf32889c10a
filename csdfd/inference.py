"""Prediction and evaluation of a detector on frame sets (Algorithm 1, PREDICT: features,
projection, classifier; a plain forward pass).

Shared by the trainer's per-epoch evaluation, ``python -m csdfd.evaluate`` and
``python -m csdfd.predict`` (the command that scores images and videos; this module has none).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .data import Frames
from .metrics import frame_metrics
from .models import Detector, normalisation


def fit_size(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a [n, H, W, 3] uint8 batch to ``size`` x ``size`` (no-op if it already is)."""
    if images.shape[1:3] == (size, size):
        return images
    interp = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=interp) for im in images])


def to_input(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
             device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC RGB -> normalised float NCHW on ``device``.

    The uint8 batch crosses to the device (4x fewer bytes than float), and the NHWC -> NCHW
    permute is free: its strides already are channels_last, kept or made contiguous as asked.
    """
    x = torch.as_tensor(images).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    x = (x - m) / s
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


@torch.no_grad()
def predict(model: Detector, frames: Frames, img_size: int, batch_size: int = 128,
            amp: bool = False, channels_last: bool = False) -> np.ndarray:
    """P(fake) for every frame of ``frames`` (model switched to eval mode and back)."""
    device = next(model.parameters()).device
    mean, std = normalisation(model)
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in range(0, len(frames), batch_size):
            idx = np.arange(start, min(start + batch_size, len(frames)))
            x = to_input(fit_size(frames.images(idx), img_size), mean, std, device,
                         channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            scores.append(torch.sigmoid(logits.float()).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros(0)


def evaluate_sets(model: Detector, sets: dict[str, Frames], img_size: int,
                  batch_size: int = 128, amp: bool = False,
                  channels_last: bool = False) -> dict[str, dict[str, float]]:
    """Frame metrics (AUC, AP, EER, acc@0.5) of the model on each named set."""
    return {
        name: frame_metrics(frames.labels,
                            predict(model, frames, img_size, batch_size, amp, channels_last))
        for name, frames in sets.items()
    }


class FaceScorer:
    """P(fake) of face crops gathered across inputs, ``batch_size`` at a time (csdfd.predict).

    Faces are dicts holding their model-input crop under ``"input"``; each gets ``"score"``.
    ``state["pending"]`` counts the queued faces of the input ``state`` they belong to.
    """

    def __init__(self, model: Detector, batch_size: int, amp: bool = False):
        self.model, self.batch_size, self.amp = model, batch_size, amp
        self.device = next(model.parameters()).device
        self.mean, self.std = normalisation(model)
        self.queue: list[tuple[dict, dict]] = []  # (face, its item's state)
        self.seconds = 0.0

    def add(self, face: dict, state: dict) -> None:
        """Queue a face; a full batch runs at once."""
        state["pending"] += 1
        self.queue.append((face, state))
        if len(self.queue) >= self.batch_size:
            self._run()

    def flush(self) -> None:
        """Score every queued face."""
        while self.queue:
            self._run()

    @torch.no_grad()
    def _run(self) -> None:
        batch, self.queue = self.queue[:self.batch_size], self.queue[self.batch_size:]
        t0 = time.perf_counter()
        x = to_input(np.stack([f["input"] for f, _ in batch]), self.mean, self.std, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        scores = torch.sigmoid(logits.float().reshape(-1)).cpu().numpy()
        self.seconds += time.perf_counter() - t0
        for (face, state), s in zip(batch, scores, strict=True):
            face["score"] = float(s)
            state["pending"] -= 1


if __name__ == "__main__":
    raise SystemExit("csdfd.inference is the library of prediction; to score images and videos "
                     "run: python -m csdfd.predict CKPT INPUT... (see --help)")
