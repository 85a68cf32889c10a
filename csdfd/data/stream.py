"""Training batches for the two streams: ``xr`` (real), ``xf`` (original fakes, stream 1) and
``xs`` (self-blends of the same reals, stream 2), as a pure function of (seed, epoch, step).

Why a pure function: a run resumed at any step (after Ctrl-C, or split into chunks) sees
exactly the batches the uninterrupted run would have seen, with no sampler or generator state
to save, and DataLoader workers can build steps in parallel without changing the result.

Batch composition (METHOD.md section 6 leaves it open): each step takes ``B`` reals (a
per-epoch permutation, so an epoch is one pass over the real training frames), ``B`` original
fakes (a per-epoch permutation of the fake pool, cycled), and one self-blend of each of the
``B`` reals, paired as in SBI so that only the blending separates ``xs`` from ``xr``: ``xr[i]``
is the very image ``xs[i]`` was blended into (SBI's augmented target when the blend augments
the target), and a pair shares its horizontal flip (probability ``hflip``; ``xf`` are flipped
on their own). Every sample's random choices
come from its own generator, seeded by (seed, epoch, global sample index): under torchrun each
rank takes its shard of the same global batch, whose content does not depend on the world size.
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
                 seed: int, epoch: int, streams: tuple[int, ...], hflip: float = 0.5,
                 rank: int = 0, world: int = 1):
        n = len(bench.train_real)
        if n < batch_size * world:
            ranks = f" x {world} ranks" if world > 1 else ""
            raise ValueError(f"batch_size {batch_size}{ranks} exceeds the {n} real training "
                             "frames")
        if 1 in streams and len(bench.train_fake) == 0:
            raise ValueError("stream 1 needs original fakes, but the training set has none")
        self.bench, self.blend, self.b, self.size = bench, blend, batch_size, img_size
        self.seed, self.epoch, self.streams, self.hflip = seed, epoch, streams, hflip
        self.rank, self.world = rank, world
        self.real_order = np.random.default_rng([seed, 101, epoch]).permutation(n)
        nf = max(len(bench.train_fake), 1)
        self.fake_order = np.random.default_rng([seed, 102, epoch]).permutation(nf)

    def __len__(self) -> int:  # the last partial global batch is dropped
        return len(self.bench.train_real) // (self.b * self.world)

    def _shard(self, step: int) -> tuple[np.ndarray, np.ndarray, list, list]:
        """This rank's part of global step ``step``: real and fake frame indices, and one
        generator per real and per fake, seeded by (seed, epoch, global sample index), so the
        global batch's content does not depend on the world size (csdfd.distributed)."""
        big = self.b * self.world
        pos = step * big + np.arange(self.rank * self.b, (self.rank + 1) * self.b)
        ridx = np.sort(self.real_order[step * big : (step + 1) * big])[pos - step * big]
        fidx = np.sort(self.fake_order[(step * big + np.arange(big)) % len(self.fake_order)])
        rngs = [np.random.default_rng([self.seed, 103, self.epoch, g]) for g in pos]
        frngs = [np.random.default_rng([self.seed, 104, self.epoch, g]) for g in pos]
        return ridx, fidx[pos - step * big], rngs, frngs

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        ridx, fidx, rngs, frngs = self._shard(step)
        if hasattr(self.blend, "pair") and hasattr(self.bench.train_real, "raw"):
            return self._sbi_step(ridx, fidx, rngs, frngs)
        real = self.bench.train_real.images(ridx)
        out = {"xr": real}
        if 1 in self.streams:
            out["xf"] = self.bench.train_fake.images(fidx)
        if 2 in self.streams:
            lms = self.bench.train_real.landmarks(ridx)
            pairs = [_blend_pair(self.blend, img, lm, rng)
                     for img, lm, rng in zip(real, lms, rngs, strict=True)]
            out["xr"] = np.stack([p[0] for p in pairs])
            out["xs"] = np.stack([p[1] for p in pairs])
        # one draw per sample after its blend: a pair (xr[i], xs[i]) is one image, one flip
        flips = {"xr": np.array([g.random() < self.hflip for g in rngs]),
                 "xf": np.array([g.random() < self.hflip for g in frngs])}
        flips["xs"] = flips["xr"]
        for key in ("xr", "xf", "xs"):
            if key in out:
                imgs = fit_size(out[key], self.size)
                imgs = np.where(flips[key][:, None, None, None], imgs[:, :, ::-1], imgs)
                out[key] = torch.from_numpy(np.ascontiguousarray(imgs))
        return out

    def _sbi_step(self, ridx: np.ndarray, fidx: np.ndarray, rngs: list,
                  frngs: list) -> dict[str, torch.Tensor]:
        """Real data with the full SBI (csdfd.data.sbi, from the stored face crops): ``xr`` and
        ``xs`` are SBI pairs (shared random crop, flip, colour and JPEG); ``xf`` get the same
        augmentation without blending, so no stream can tell real from fake by augmentation."""
        imgs, lms = self.bench.train_real.raw(ridx)
        # pairs made at the training size, with the run's flip probability
        cfg = self.blend.config(size=self.size, p_flip=self.hflip)
        if 2 in self.streams:
            pairs = [self.blend.pair(im, lm, g, cfg)
                     for im, lm, g in zip(imgs, lms, rngs, strict=True)]
            out = {"xr": [p.real for p in pairs], "xs": [p.fake for p in pairs]}
        else:
            out = {"xr": [self.blend.augment(im, lm, g, cfg)[0]
                          for im, lm, g in zip(imgs, lms, rngs, strict=True)]}
        if 1 in self.streams:
            fimgs, flms = self.bench.train_fake.raw(fidx)
            out["xf"] = [self.blend.augment(im, lm, g, cfg)[0]
                         for im, lm, g in zip(fimgs, flms, frngs, strict=True)]
        return {k: torch.from_numpy(np.ascontiguousarray(fit_size(np.stack(v), self.size)))
                for k, v in out.items()}


def _blend_pair(blend: Blend, img: np.ndarray, lm: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(real, fake) of one self-blend. A blend whose real is not always its input (SBI augments
    the target half of the time) says so with a ``with_real`` attribute that returns it."""
    if hasattr(blend, "with_real"):
        real, fake, _ = blend.with_real(img, lm, rng)
        return real, fake
    return img, blend(img, lm, rng)[0]


def step_loader(ds: StepDataset, start: int, workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches ``start .. len(ds) - 1`` of one epoch, in order (``workers`` build them ahead)."""
    # A private generator: a DataLoader otherwise draws its base seed from the global torch RNG,
    # which would shift dropout masks after a mid-epoch resume.
    return torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=range(start, len(ds)), num_workers=workers,
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(ds.seed),
    )
