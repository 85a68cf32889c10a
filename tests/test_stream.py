"""Training batches (csdfd/data/stream.py): a self-blend ``xs[i]`` and its real ``xr[i]`` are one
image, the same one (issue 13): same flip, and the real is the image the fake was blended into."""

from __future__ import annotations

import numpy as np
import pytest
from realfaces import face_crop

from csdfd.data import ArrayFrames, Benchmark, get_blend
from csdfd.data import sbi as S
from csdfd.data.stream import StepDataset

B, N = 4, 8  # batch size, real frames (two steps per epoch)


class RawFrames(ArrayFrames):
    """Stored crops with their landmarks, as DiskFrames gives them to the full SBI path."""

    def raw(self, idx):
        return self.images_[idx], self.landmarks_[idx]


def _bench(frames=ArrayFrames) -> Benchmark:
    crops = [face_crop(name, size=128, margin=3.0) for name in ("astronaut", "grace_hopper")]
    imgs = np.stack([c[0] for c in crops] * (N // 2))
    lms = np.stack([c[1] for c in crops] * (N // 2))
    real = frames(imgs, np.zeros(N), lms)
    fake = frames(imgs[:, :, ::-1].copy(), np.ones(N), lms)
    return Benchmark("faces", real, fake, real, real)


def _same_image(xr, xs) -> np.ndarray:
    """Fraction of pixels where each pair agrees exactly (1 outside the blend, 0 if mirrored)."""
    return (xr.numpy() == xs.numpy()).all(axis=-1).mean(axis=(1, 2))


@pytest.mark.parametrize("blend", ["simple", "sbi"])
def test_a_pair_shares_its_flip_and_its_real(blend):
    bench = _bench()
    originals = bench.train_real.images_
    kinds = set()
    ds = StepDataset(bench, get_blend(blend), B, 128, seed=3, epoch=0, streams=(1, 2))
    for step in range(len(ds)):
        batch = ds[step]
        assert (_same_image(batch["xr"], batch["xs"]) > 0.5).all()
        ridx = np.sort(ds.real_order[step * B:(step + 1) * B])
        for xr, src in zip(batch["xr"].numpy(), originals[ridx], strict=True):
            kinds.add("plain" if np.array_equal(xr, src) else
                      "flipped" if np.array_equal(xr, src[:, ::-1]) else "augmented target")
    expected = {"plain", "flipped"} | ({"augmented target"} if blend == "sbi" else set())
    assert kinds == expected


def test_full_sbi_pairs_are_made_at_the_training_size():
    """On stored crops (a frame set with ``raw``), xr and xs are the real and fake of full SBI
    pairs made at the run's size and flip probability (no resampling afterwards)."""
    bench = _bench(RawFrames)
    ds = StepDataset(bench, get_blend("sbi"), B, 96, seed=0, epoch=0, streams=(2,), hflip=0.3)
    batch = ds[1]
    cfg = S.SBIConfig(size=96, p_flip=0.3)
    for i, k in enumerate(np.sort(ds.real_order[B:2 * B])):
        rng = np.random.default_rng([0, 103, 0, B + i])  # per sample: (seed, epoch, global index)
        pair = S.sbi_pair(bench.train_real.images_[k], bench.train_real.landmarks_[k], rng, cfg)
        np.testing.assert_array_equal(batch["xr"][i].numpy(), pair.real)
        np.testing.assert_array_equal(batch["xs"][i].numpy(), pair.fake)
