"""Training batches for the two streams: ``xr`` (real), ``xf`` (original fakes, stream 1) and
``xs`` (self-blends of the same reals, stream 2), as a pure function of (seed, epoch, step).

Why a pure function: a run resumed at any step (after Ctrl-C, or split into chunks) sees
exactly the batches the uninterrupted run would have seen, with no sampler or generator state
to save, and DataLoader workers can build steps in parallel without changing the result.

Batch composition (METHOD.md section 6 leaves it open): each step takes ``B`` reals (a
per-epoch permutation, so an epoch is one pass over the real training frames), ``B`` original
fakes (a per-epoch permutation of the fake pool, cycled), and one self-blend of each of the
``B`` reals, paired as in SBI so that only the blending separates ``xs`` from ``xr``. Each
image is then flipped horizontally with probability ``hflip``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..inference import fit_size
from .base import Benchmark, Blend


class StepDataset(torch.utils.data.Dataset):
    """Item ``step`` of epoch ``epoch``: a dict of uint8 NHWC tensors ``xr``, ``xf``, ``xs``
    (streams not asked for are absent, and cost nothing)."""

    def __init__(self, bench: Benchmark, blend: Blend, batch_size: int, img_size: int,
                 seed: int, epoch: int, streams: tuple[int, ...], hflip: float = 0.5):
        n = len(bench.train_real)
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} real training frames")
        if 1 in streams and len(bench.train_fake) == 0:
            raise ValueError("stream 1 needs original fakes, but the training set has none")
        self.bench, self.blend, self.b, self.size = bench, blend, batch_size, img_size
        self.seed, self.epoch, self.streams, self.hflip = seed, epoch, streams, hflip
        self.real_order = np.random.default_rng([seed, 101, epoch]).permutation(n)
        nf = max(len(bench.train_fake), 1)
        self.fake_order = np.random.default_rng([seed, 102, epoch]).permutation(nf)

    def __len__(self) -> int:
        return len(self.bench.train_real) // self.b  # the last partial batch is dropped

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        b = self.b
        ridx = np.sort(self.real_order[step * b : (step + 1) * b])
        rng = np.random.default_rng([self.seed, 103, self.epoch, step])
        if hasattr(self.blend, "pair") and hasattr(self.bench.train_real, "raw"):
            return self._sbi_step(step, ridx, rng)
        real = self.bench.train_real.images(ridx)
        out = {"xr": real}
        if 1 in self.streams:
            fidx = self.fake_order[(step * b + np.arange(b)) % len(self.fake_order)]
            out["xf"] = self.bench.train_fake.images(np.sort(fidx))
        if 2 in self.streams:
            lms = self.bench.train_real.landmarks(ridx)
            out["xs"] = np.stack([self.blend(img, lm, rng)[0]
                                  for img, lm in zip(real, lms, strict=True)])
        for key in ("xr", "xf", "xs"):  # a fixed key order keeps the rng draws reproducible
            if key in out:
                imgs = fit_size(out[key], self.size)
                flip = rng.random(len(imgs)) < self.hflip
                imgs = np.where(flip[:, None, None, None], imgs[:, :, ::-1], imgs)
                out[key] = torch.from_numpy(np.ascontiguousarray(imgs))
        return out

    def _sbi_step(self, step: int, ridx: np.ndarray,
                  rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Real data with the full SBI (csdfd.data.sbi, from the stored face crops): ``xr`` and
        ``xs`` are SBI pairs (shared random crop, flip, colour and JPEG); ``xf`` get the same
        augmentation without blending, so no stream can tell real from fake by augmentation."""
        imgs, lms = self.bench.train_real.raw(ridx)
        if 2 in self.streams:
            pairs = [self.blend.pair(im, lm, rng) for im, lm in zip(imgs, lms, strict=True)]
            out = {"xr": [p.real for p in pairs], "xs": [p.fake for p in pairs]}
        else:
            out = {"xr": [self.blend.augment(im, lm, rng)[0]
                          for im, lm in zip(imgs, lms, strict=True)]}
        if 1 in self.streams:
            fidx = self.fake_order[(step * self.b + np.arange(self.b)) % len(self.fake_order)]
            fimgs, flms = self.bench.train_fake.raw(np.sort(fidx))
            out["xf"] = [self.blend.augment(im, lm, rng)[0]
                         for im, lm in zip(fimgs, flms, strict=True)]
        return {k: torch.from_numpy(np.ascontiguousarray(fit_size(np.stack(v), self.size)))
                for k, v in out.items()}


def step_loader(ds: StepDataset, start: int, workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches ``start .. len(ds) - 1`` of one epoch, in order (``workers`` build them ahead)."""
    # A private generator: a DataLoader otherwise draws its base seed from the global torch RNG,
    # which would shift dropout masks after a mid-epoch resume.
    return torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=range(start, len(ds)), num_workers=workers,
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(ds.seed),
    )
