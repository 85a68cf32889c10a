"""The benchmark a run trains and tests on, named by ``cfg.data``: the embedded synthetic one,
or real faces prepared by ``python -m csdfd.preprocess`` (or indexed by DeepfakeBench).

The last step of the data layering: raw layouts (:mod:`.layouts`) -> the face pipeline
(:mod:`.faces`) -> prepared frames (:mod:`.frames`) -> this module.
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark
from .faces import input_config
from .frames import DiskFrames, FaceVideo, methods_listing, open_faces, split_frames, split_overlap
from .synthetic import SyntheticSpec, make_benchmark


def load_benchmark(cfg) -> Benchmark:
    """The benchmark named by ``cfg.data``: ``"synthetic"`` (the embedded one) or a real dataset
    ``NAME:FACES`` (:func:`real_benchmark`). Errors name the input and the fix."""
    if cfg.data == "synthetic":
        return make_benchmark(SyntheticSpec.from_config(cfg))
    name, sep, rest = cfg.data.partition(":")
    if not sep or not name or Path(cfg.data).exists():  # a bare path: no dataset name
        root = Path(cfg.data).expanduser()
        if not root.exists():
            raise FileNotFoundError(
                f"data path {str(root)!r} does not exist; pass --data synthetic for the embedded "
                "benchmark, or NAME:FACES for faces prepared by `python -m csdfd.preprocess`"
            )
        raise ValueError(f"--data {str(root)!r}: name the dataset, e.g. --data ffpp:{root} "
                         "(NAME:FACES, see `python -m csdfd.preprocess --help`)")
    return real_benchmark(cfg)


def real_benchmark(cfg) -> Benchmark:
    """The two-stream benchmark on real data (paper section V-A): ``cfg.data`` gives the
    source domain (its train split: reals for both streams and original fakes for stream 1;
    val: checkpoint selection; test: in-domain test) and each of ``cfg.test`` a cross-domain
    target (its test split). ``cfg.quality`` picks the FF++ compression."""
    quality = getattr(cfg, "quality", None)
    crop = input_config(cfg.img_size)
    name, videos = open_faces(cfg.data, quality)
    tested = split_overlap(videos)  # in-domain test videos also listed under train

    def part(split: str, label: int | None = None) -> DiskFrames:
        frames = split_frames(videos, split, label, tested if split == "train" else (),
                              cfg=crop)
        if not len(frames):
            what = {None: "", 0: " real", 1: " fake"}[label]
            raise ValueError(f"--data {cfg.data}: no{what} videos in its {split} split")
        return frames

    targets: dict[str, DiskFrames] = {}
    for spec in getattr(cfg, "test", None) or []:
        target, tv = open_faces(spec)
        if target in targets:
            raise ValueError(f"--test {spec}: dataset {target!r} is given twice")
        targets[target] = two_classes(f"--test {spec}", tv, cfg=crop)
    return Benchmark(name, part("train", 0), part("train", 1), part("val"),
                     two_classes(f"--data {cfg.data}", videos, cfg=crop), targets,
                     part("val", 0))


def two_classes(what: str, videos: list[FaceVideo], **kwargs) -> DiskFrames:
    """The test split of ``videos``; an error naming the methods there unless it has both
    reals and fakes (AUC is undefined otherwise)."""
    test = [v for v in videos if v.split == "test"]
    for label, kind in ((0, "real"), (1, "fake")):
        if not any(v.label == label for v in test):
            raise ValueError(f"{what}: no {kind} videos in its test split (methods there: "
                             f"{methods_listing(test)})")
    return DiskFrames(test, **kwargs)
