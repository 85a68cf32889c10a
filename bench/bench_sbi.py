"""SBI throughput on one CPU core at 256 x 256 (target: >= 100 samples/s per core).

    pytest bench/bench_sbi.py --benchmark-columns=mean,ops

``sbi_pair`` is the full training pair (flip, blend frame, STG, MG, blend, shared colour and
JPEG post-augmentation, final crop; two images out); ``sbi`` is the blend-registry entry (STG +
MG + blend of the whole image, one image out). Each round makes ``BATCH`` samples from a real
photograph (skimage's astronaut) with OpenCV limited to one thread; samples/s and output
bytes/s are printed and stored in ``extra_info``.

``test_real_equals_fake_outside_the_mask`` is issue 13's check: over 200 seeds, the mean
grey-level difference between real and fake where the blend mask is 0 (JPEG blocks that
straddle the mask's edge leave a few hundredths of a level).
"""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from realfaces import face_crop  # noqa: E402

from csdfd.data import sbi as S  # noqa: E402

BATCH = 64


def _pair(img, lm, rng):
    out = S.sbi_pair(img, lm, rng)
    return out.real, out.fake


VARIANTS = {"sbi_pair": (_pair, 2), "sbi": (S.sbi, 1)}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sbi_throughput(benchmark, name):
    fn, images_out = VARIANTS[name]
    img, lm = face_crop("astronaut", size=256)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # per-core figure
    rng = np.random.default_rng(0)

    def run():
        for _ in range(BATCH):
            fn(img, lm, rng)

    try:
        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    finally:
        cv2.setNumThreads(threads)
    per_s = BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["samples_per_s_per_core"] = per_s
    benchmark.extra_info["bytes_per_s"] = per_s * images_out * img.nbytes
    print(f"\n{name}: {per_s:.0f} samples/s per core at 256x256, "
          f"{per_s * images_out * img.nbytes / 1e6:.1f} MB/s out")


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_real_equals_fake_outside_the_mask(name):
    img, lm = face_crop(name, size=256)
    gaps = []
    for seed in range(200):
        out = S.sbi_pair(img, lm, np.random.default_rng(seed))
        grey = np.abs(out.real.astype(np.float32).mean(axis=2) - out.fake.mean(axis=2))
        gaps.append(float(grey[out.mask == 0].mean()))
    gaps = np.array(gaps)
    print(f"\n{name}: {(gaps > 0.5).sum()}/200 pairs differ by > 0.5 grey level outside the "
          f"mask; mean {gaps.mean():.3f}, max {gaps.max():.3f}")
    assert gaps.max() < 0.5
