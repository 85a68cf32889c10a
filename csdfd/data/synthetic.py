"""The embedded synthetic deepfake benchmark: FF++-shaped training data and unseen target sets,
rendered procedurally in seconds, so the trainer runs end to end on a machine with no dataset.

Layout (paper section V-A, in miniature):

- identities are split into train / validation / in-domain test; each cross-domain target set
  has its own identities and capture conditions (:data:`forgeries.TARGET_CAPTURE`);
- training: real frames with 68-point landmarks (stream 2 self-blends them online) and the
  original forgeries of the two source families (:data:`forgeries.SOURCE_FAMILIES`), as many
  fakes as reals, split evenly between families;
- validation and in-domain test: real frames and source-family fakes of their identities;
- targets: real frames and one held-out family each (:data:`forgeries.TARGET_FAMILIES`).

Every frame is a pure function of (seed, set, index): changing the size of one set never
changes another, and two runs with the same seed see identical data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .base import ArrayFrames, Benchmark
from .forgeries import SOURCE_FAMILIES, TARGET_CAPTURE, TARGET_FAMILIES, Family
from .render import finish, render, sample_frame, sample_identity

# Set codes: the second word of every generator seed, so sets never share random streams.
_TRAIN, _VAL, _TEST, _TARGET0 = 1, 2, 3, 10
_IDENTITY = 0


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and seed of the synthetic benchmark (see the ``synth_*`` fields of Config)."""

    size: int = 64
    train_ids: int = 60
    val_ids: int = 10
    test_ids: int = 30
    frames: int = 20  # per training identity
    eval_frames: int = 10  # per validation / test identity
    seed: int = 0

    @staticmethod
    def from_config(cfg) -> SyntheticSpec:
        return SyntheticSpec(cfg.img_size, cfg.synth_train_ids, cfg.synth_val_ids,
                             cfg.synth_test_ids, cfg.synth_frames, cfg.synth_eval_frames, cfg.seed)


def _identities(spec: SyntheticSpec, pool: int, first: int, count: int):
    """``count`` identities of pool ``pool`` (0: the FF++-like source population)."""
    return [sample_identity(np.random.default_rng([spec.seed, _IDENTITY, pool, first + i]))
            for i in range(count)]


def _reals(spec: SyntheticSpec, ids: list, frames: int, code: int,
           capture: dict | None = None) -> ArrayFrames:
    imgs, lms = [], []
    for k in range(len(ids) * frames):
        rng = np.random.default_rng([spec.seed, code, 0, k])
        fr = sample_frame(rng, **(capture or {}))
        img, lm = render(ids[k // frames], fr, spec.size)
        imgs.append(finish(img, fr, rng))
        lms.append(lm)
    n = len(imgs)
    return ArrayFrames(np.stack(imgs), np.zeros(n, np.int64), np.stack(lms),
                       np.full(n, "real", dtype=object))


def _fakes(spec: SyntheticSpec, ids: list, families: dict[str, Family], count: int, code: int,
           capture: dict | None = None) -> ArrayFrames:
    """``count`` fakes, families in turn; target and source identities drawn from ``ids``."""
    names = list(families)
    imgs, lms, kinds = [], [], []
    for k in range(count):
        rng = np.random.default_rng([spec.seed, code, 1, k])
        t, s = rng.choice(len(ids), 2, replace=False)
        fr = sample_frame(rng, **(capture or {}))
        name = names[k % len(names)]
        img, lm = families[name](ids[t], ids[s], fr, spec.size, rng)
        imgs.append(finish(img, fr, rng))
        lms.append(lm)
        kinds.append(name)
    return ArrayFrames(np.stack(imgs), np.ones(count, np.int64), np.stack(lms),
                       np.array(kinds, dtype=object))


def _labelled(spec: SyntheticSpec, ids: list, code: int, families: dict[str, Family],
              capture: dict | None = None) -> tuple[ArrayFrames, ArrayFrames]:
    """A balanced evaluation set: (reals, reals + as many fakes)."""
    reals = _reals(spec, ids, spec.eval_frames, code, capture)
    fakes = _fakes(spec, ids, families, len(reals), code, capture)
    return reals, ArrayFrames.concat([reals, fakes])


def make_benchmark(spec: SyntheticSpec, verbose: bool = True) -> Benchmark:
    """Render the whole benchmark into memory (a few seconds at the default sizes)."""
    t0 = time.perf_counter()
    train_ids = _identities(spec, 0, 0, spec.train_ids)
    val_ids = _identities(spec, 0, spec.train_ids, spec.val_ids)
    test_ids = _identities(spec, 0, spec.train_ids + spec.val_ids, spec.test_ids)
    train_real = _reals(spec, train_ids, spec.frames, _TRAIN)
    train_fake = _fakes(spec, train_ids, SOURCE_FAMILIES, len(train_real), _TRAIN)
    val_real, val = _labelled(spec, val_ids, _VAL, SOURCE_FAMILIES)
    _, test = _labelled(spec, test_ids, _TEST, SOURCE_FAMILIES)
    targets = {}
    for j, (name, family) in enumerate(TARGET_FAMILIES.items()):
        ids = _identities(spec, 1 + j, 0, spec.test_ids)
        _, targets[name] = _labelled(spec, ids, _TARGET0 + j, {name: family},
                                     TARGET_CAPTURE[name])
    bench = Benchmark(f"synthetic(seed={spec.seed}, {spec.size}px)", train_real, train_fake,
                      val, test, targets, val_real)
    if verbose:
        print(f"{bench.summary()}\n  rendered in {time.perf_counter() - t0:.1f} s", flush=True)
    return bench
