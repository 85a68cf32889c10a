"""Frame sets and the benchmark bundle: the types every data module and the trainer share.

- :class:`Frames`: an indexable set of face crops with labels (0 real, 1 fake) and, where
  known, 68-point landmarks. :class:`ArrayFrames` holds them in memory; a loader for data on
  disk (:class:`csdfd.data.frames.DiskFrames`) implements the same three members.
- :class:`Benchmark`: training reals (with landmarks, for self-blending), training original
  fakes, a validation set (checkpoint selection only), the in-domain test set and the
  cross-domain target sets.
- :data:`BLENDS`: name -> ``"module:function"`` of a blend with the signature
  ``fn(img uint8 HxWx3 RGB, landmarks float32 [68, 2] (x, y) pixels, rng) ->
  (fake uint8 HxWx3, mask float32 HxW in [0, 1])``. Adding a blend is adding an entry.

This module imports no other module of :mod:`csdfd.data` (blends are resolved by name when
asked for), so that every other one may import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

Blend = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

#: Self-blending functions for stream 2, resolved lazily ("module:function").
BLENDS: dict[str, str] = {
    "simple": "csdfd.data.selfblend:self_blend",
    "sbi": "csdfd.data.sbi:sbi",
}


def get_blend(name: str) -> Blend:
    """The blend function registered as ``name``; unknown names list the registered ones."""
    if name not in BLENDS:
        raise ValueError(f"unknown blend {name!r}; registered blends: {sorted(BLENDS)}")
    module, func = BLENDS[name].split(":")
    return getattr(importlib.import_module(module), func)


@runtime_checkable
class Frames(Protocol):
    """Face crops with labels; all images of one set share one size."""

    labels: np.ndarray  # [N] int64, 0 real / 1 fake

    def __len__(self) -> int: ...

    def images(self, idx: np.ndarray) -> np.ndarray:
        """[n, H, W, 3] uint8 RGB for the frame indices ``idx``."""
        ...

    def landmarks(self, idx: np.ndarray) -> np.ndarray:
        """[n, 68, 2] float32 (x, y) pixel landmarks (needed only for self-blending)."""
        ...


@dataclass
class ArrayFrames:
    """In-memory :class:`Frames`; ``kinds`` names each frame's source (``"real"`` or a forgery
    family) for per-family breakdowns."""

    images_: np.ndarray
    labels: np.ndarray
    landmarks_: np.ndarray | None = None
    kinds: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images_)
        if self.images_.ndim != 4 or self.images_.shape[3] != 3 or self.images_.dtype != np.uint8:
            raise ValueError(f"images must be [N, H, W, 3] uint8, got {self.images_.shape} "
                             f"{self.images_.dtype}")
        self.labels = np.asarray(self.labels, np.int64)
        if self.labels.shape != (n,) or not np.isin(self.labels, (0, 1)).all():
            raise ValueError(f"labels must be {n} values in {{0, 1}}")
        if self.landmarks_ is not None and self.landmarks_.shape != (n, 68, 2):
            raise ValueError(f"landmarks must be [{n}, 68, 2], got {self.landmarks_.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self.images_[idx]

    def landmarks(self, idx: np.ndarray) -> np.ndarray:
        if self.landmarks_ is None:
            raise ValueError("this frame set has no landmarks; self-blending needs them")
        return self.landmarks_[idx]

    @staticmethod
    def concat(parts: list[ArrayFrames]) -> ArrayFrames:
        """Concatenate sets (landmarks and kinds kept only if every part has them)."""
        lms = [p.landmarks_ for p in parts]
        kinds = [p.kinds for p in parts]
        return ArrayFrames(
            np.concatenate([p.images_ for p in parts]),
            np.concatenate([p.labels for p in parts]),
            None if any(x is None for x in lms) else np.concatenate(lms),
            None if any(x is None for x in kinds) else np.concatenate(kinds),
        )


class ConcatFrames:
    """Several :class:`Frames` seen as one (any implementation, in memory or on disk)."""

    def __init__(self, parts: list[Frames]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.labels = np.concatenate([p.labels for p in self.parts]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _gather(self, idx: np.ndarray, get) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            return get(self.parts[0], idx)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        chunks, order = [], []
        for j in np.unique(part):
            sel = np.flatnonzero(part == j)
            chunks.append(get(self.parts[j], idx[sel] - self.offsets[j]))
            order.append(sel)
        out = np.concatenate(chunks)
        return out[np.argsort(np.concatenate(order), kind="stable")]

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self._gather(idx, lambda p, i: p.images(i))

    def landmarks(self, idx: np.ndarray) -> np.ndarray:
        return self._gather(idx, lambda p, i: p.landmarks(i))


@dataclass
class Benchmark:
    """What a run uses: training streams, a validation set and the test sets (paper Table I:
    the in-domain test set and the cross-domain targets, never seen in training or selection)."""

    name: str
    train_real: Frames
    train_fake: Frames
    val: Frames
    test: Frames
    targets: dict[str, Frames] = field(default_factory=dict)
    val_real: Frames | None = None  # validation reals with landmarks (for val_blend)

    def summary(self) -> str:
        def n(f: Frames) -> str:
            fake = int(np.sum(f.labels))
            return f"{len(f) - fake} real + {fake} fake"

        lines = [f"benchmark {self.name}: train {len(self.train_real)} real / "
                 f"{len(self.train_fake)} original fakes, val {n(self.val)}, "
                 f"in-domain test {n(self.test)}"]
        lines += [f"  target {k}: {n(v)}" for k, v in self.targets.items()]
        return "\n".join(lines)


class BlendedFrames:
    """Self-blended fakes of the real frames of ``frames``, made on access (constant memory) with
    a generator seeded by (seed, frame index): the same fakes on every read, e.g. every epoch's
    validation."""

    def __init__(self, frames: Frames, blend: Blend, seed: int):
        self.frames, self.blend, self.seed = frames, blend, seed
        self.source = np.flatnonzero(frames.labels == 0)
        self.labels = np.ones(len(self.source), np.int64)

    def __len__(self) -> int:
        return len(self.source)

    def images(self, idx: np.ndarray) -> np.ndarray:
        src = self.source[np.asarray(idx, np.int64)]
        imgs, lms = self.frames.images(src), self.frames.landmarks(src)
        return np.stack([self.blend(img, lm, np.random.default_rng([self.seed, 7, int(i)]))[0]
                         for i, img, lm in zip(src, imgs, lms, strict=True)])

    def landmarks(self, idx: np.ndarray) -> np.ndarray:
        return self.frames.landmarks(self.source[np.asarray(idx, np.int64)])
