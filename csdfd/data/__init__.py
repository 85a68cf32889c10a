"""Data for CS-DFD: frame sets, the benchmark bundle a run trains and tests on, and the
self-blending registry for stream 2.

Modules, in import order (each imports only modules above it, never this package's
``__init__``):

- :mod:`.base`: the shared types (:class:`Frames`, :class:`ArrayFrames`, :class:`Benchmark`,
  the :data:`BLENDS` registry);
- :mod:`.layouts` (with :mod:`.ffpp_splits`): raw dataset layouts, videos as published;
- :mod:`.sbi`, :mod:`.selfblend`: self-blending, and SBI's evaluation crop;
- :mod:`.faces`: the face pipeline (frame selection, detection, landmarks, the 256-pixel crop,
  the model-input crop), shared by ``csdfd.preprocess``, evaluation and ``csdfd.predict``;
- :mod:`.frames`: prepared frames on disk (``csdfd.preprocess`` output, DeepfakeBench);
- :mod:`.render`, :mod:`.forgeries`, :mod:`.synthetic`: the embedded benchmark;
- :mod:`.benchmark`: :func:`load_benchmark`, the benchmark named by a config;
- :mod:`.stream`: training batches of the two streams.
"""

from .base import (
    BLENDS,
    ArrayFrames,
    Benchmark,
    Blend,
    BlendedFrames,
    ConcatFrames,
    Frames,
    get_blend,
)
from .benchmark import load_benchmark

__all__ = ["BLENDS", "ArrayFrames", "Benchmark", "Blend", "BlendedFrames", "ConcatFrames",
           "Frames", "get_blend", "load_benchmark"]
