"""Face frames on disk: the output of ``python -m csdfd.preprocess`` or a DeepfakeBench index.

:func:`open_faces` reads a dataset spec into :class:`FaceVideo` records:

- ``NAME:FACES`` where FACES is a folder written by ``python -m csdfd.preprocess`` (it has an
  ``index.json``); NAME is the layout it came from (``ffpp``, ``celebdf``, ...);
- ``deepfakebench:FILE.json[,root=DIR]``: a dataset JSON of DeepfakeBench
  (``{dataset: {label: {split: {[quality:] {video: {"frames": [...]}}}}}}``, as its
  ``preprocessing/rearrange.py`` writes it); labels whose name contains "real" are 0, others
  1; landmarks are read from the sibling ``landmarks/`` folder where present. Frame paths are
  relative to DeepfakeBench's ``datasets/rgb`` (or absolute, from the authors' machines): they
  are resolved against ``root`` or, failing that, ``root/datasets/rgb`` (default root: the
  current folder), dropping leading components until they exist. Keys that are not videos
  (rearrange.py leaves ``label`` and ``frames`` beside the videos of DFDC's ``val``) are
  skipped with one warning.

Options after a comma: ``quality=c23`` (FF++ compression to keep), ``methods=A+B`` (keep those
methods; FF++ names and DeepfakeBench's labels, e.g. ``Deepfakes`` and ``FF-DF``, are the same
method; reals are kept unless a real method is named), ``frames=N`` (N frames per video,
evenly spaced). A video listed in both the train and the test split of an index (DeepfakeBench's
Celeb-DF JSON lists every test video under train too) is warned about and left out of training.

:class:`DiskFrames` serves the frames of a list of videos through the
:class:`csdfd.data.Frames` interface (``labels``, ``images(idx)``, ``landmarks(idx)``), read
lazily so that memory stays bounded whatever the dataset size. ``images`` returns the
model-input crop of the face pipeline (:func:`csdfd.data.faces.input_crop`: SBI's evaluation
crop, the landmark box with the middle of the training margins); ``raw`` returns the stored
crops, from which training draws random crops.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import layouts
from .faces import even_indices, input_crop
from .sbi import DEFAULT, SBIConfig, eval_crop_landmarks

INDEX_NAME = "index.json"
#: DeepfakeBench's label for each FF++ method (``ff_dict`` of its ``preprocessing/rearrange.py``)
DFB_FFPP_LABELS = {"youtube": "FF-real", "Deepfakes": "FF-DF", "Face2Face": "FF-F2F",
                   "FaceSwap": "FF-FS", "NeuralTextures": "FF-NT", "FaceShifter": "FF-FH"}
_ALIASES = {**DFB_FFPP_LABELS, **{b: a for a, b in DFB_FFPP_LABELS.items()}}


@dataclass
class FaceVideo:
    """The face crops of one video, with their landmarks file(s) if any."""

    key: str  # dataset/method/video_id
    method: str
    label: int
    split: str
    frames: list[Path]
    landmarks: Path | list[Path] | None = None  # one [n, K, 2] .npy, or one [K, 2] per frame
    quality: str = ""

    def landmark_rows(self) -> np.ndarray:
        """[n, K, 2] float32 landmarks of all frames."""
        if self.landmarks is None:
            raise ValueError(f"{self.key} has no landmarks; SBI and the evaluation crop need "
                             "them (preprocess with python -m csdfd.preprocess)")
        if isinstance(self.landmarks, Path):
            return np.load(self.landmarks).astype(np.float32)
        return np.stack([np.load(p).reshape(-1, 2) for p in self.landmarks]).astype(np.float32)


def open_faces(spec: str, quality: str | None = None) -> tuple[str, list[FaceVideo]]:
    """(dataset name, its videos) for a spec ``NAME:PATH[,options]`` (see module docstring)."""
    name, path, opts = layouts.parse_spec(spec)
    unknown = set(opts) - {"quality", "methods", "frames", "root"}
    if unknown:
        raise ValueError(f"{spec}: unknown options {sorted(unknown)}; use quality=, methods=, "
                         "frames= (and root= for deepfakebench)")
    quality = opts.get("quality", quality)
    if name == "deepfakebench":
        name, videos = _deepfakebench(path, Path(opts.get("root", ".")), quality)
    else:
        videos = _csdfd_index(name, path, quality)
    if "methods" in opts:
        videos = select_methods(spec, videos, opts["methods"])
    if "frames" in opts:
        n = int(opts["frames"])
        for v in videos:
            v.frames = [v.frames[i] for i in even_indices(len(v.frames), n)]
            v.landmarks = _subset_landmarks(v, n)
    if not videos:
        raise ValueError(f"{spec}: no videos with faces (quality={quality}, options {opts})")
    both = split_overlap(videos)
    if both:
        warnings.warn(f"{spec}: {len(both)} videos are in both its train and test splits "
                      f"(first: {sorted(both)[:3]}); they are left out of training whenever "
                      "this set is the in-domain test set", stacklevel=2)
    return name, videos


def select_methods(spec: str, videos: list[FaceVideo], names: str) -> list[FaceVideo]:
    """The videos of the methods ``names`` (``A+B``); an FF++ method name and its
    DeepfakeBench label select the same videos. Reals are all kept unless a real method is
    named (so only the fakes can run out). A name that matches no method, or a choice that
    leaves no fakes, is an error listing the methods present."""
    present = {v.method for v in videos}
    wanted = [m.strip() for m in names.replace("+", ",").split(",") if m.strip()]
    keep = {hit for m in wanted for hit in {m, _ALIASES.get(m, m)} & present}
    unknown = [m for m in wanted if not {m, _ALIASES.get(m, m)} & present]
    if unknown:
        raise ValueError(f"{spec}: no method {unknown} in this dataset; its methods are "
                         f"{methods_listing(videos)}")
    named_real = any(v.method in keep for v in videos if v.label == 0)
    out = [v for v in videos if v.method in keep or (v.label == 0 and not named_real)]
    if not any(v.label == 1 for v in out):
        raise ValueError(f"{spec}: methods={names} leaves no fake videos; name at least one "
                         f"fake method of {methods_listing(videos)}")
    return out


def methods_listing(videos: list[FaceVideo]) -> str:
    """``fake: A, B; real: C``: the methods of ``videos``, for error messages."""
    parts = []
    for what, label in (("fake", 1), ("real", 0)):
        names = sorted({v.method for v in videos if v.label == label})
        parts.append(f"{what}: {', '.join(names) if names else 'none'}")
    return "; ".join(parts)


def split_overlap(videos: list[FaceVideo], a: str = "train", b: str = "test") -> set[str]:
    """Keys of the videos listed in both splits ``a`` and ``b``."""
    return {v.key for v in videos if v.split == a} & {v.key for v in videos if v.split == b}


def _subset_landmarks(v: FaceVideo, n: int):
    if isinstance(v.landmarks, list):
        return [v.landmarks[i] for i in even_indices(len(v.landmarks), n)]
    return v.landmarks  # a per-video array: rows are picked with the frames (see DiskFrames)


def _csdfd_index(name: str, root: Path, quality: str | None) -> list[FaceVideo]:
    index_path = root / INDEX_NAME
    if not index_path.exists():
        hint = (f"python -m csdfd.preprocess {name}:{root} --out FACES, then pass {name}:FACES"
                if root.exists() else "check the path")
        raise FileNotFoundError(f"{index_path} not found: {name}:PATH takes a folder written by "
                                f"python -m csdfd.preprocess ({hint})")
    index = json.loads(index_path.read_text())
    if index.get("format") != "csdfd-faces/1":
        raise ValueError(f"{index_path} is not a csdfd face index (format "
                         f"{index.get('format')!r})")
    if index.get("dataset") not in (name, None) and name != "folder":
        raise ValueError(f"{index_path} holds dataset {index['dataset']!r}, not {name!r}")
    videos = []
    for entry in index["videos"]:
        if entry["status"] != "ok":
            continue
        if quality and entry.get("quality") and entry["quality"] != quality:
            raise ValueError(f"{index_path} was preprocessed at quality {entry['quality']}, not "
                             f"{quality}; preprocess {quality} into another folder")
        folder = root / entry["dir"]
        videos.append(FaceVideo(entry["key"], entry["method"], int(entry["label"]),
                                entry["split"], [folder / f for f in entry["frames"]],
                                folder / "landmarks.npy", entry.get("quality") or ""))
    return videos


def _deepfakebench(path: Path, root: Path, quality: str | None) -> tuple[str, list[FaceVideo]]:
    data = json.loads(layouts._need(path, "DeepfakeBench dataset JSON").read_text())
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError(f"{path}: expected {{dataset: {{label: {{split: ...}}}}}}")
    (dataset, labels), = data.items()
    videos, resolve, skipped = [], _Resolver(root, path), []
    for label_name, splits in labels.items():
        label = 0 if "real" in label_name.lower() else 1
        for split, node in splits.items():
            if node and set(node) <= set(layouts.QUALITIES):  # FF++: one level per quality
                if quality is None and len(node) > 1:
                    raise ValueError(f"{path} has qualities {sorted(node)}: add ,quality=c23")
                node = node.get(quality, {}) if quality else next(iter(node.values()))
            for video, info in node.items():
                if not isinstance(info, dict):  # rearrange.py's stray label / frames keys
                    skipped.append(f"{label_name}/{split}/{video}")
                    continue
                frames = [resolve(f) for f in sorted(info.get("frames", []))]
                if not frames:
                    continue
                lms = [_dfb_landmark(f) for f in frames]
                videos.append(FaceVideo(f"{dataset}/{label_name}/{video}", label_name, label,
                                        split, frames, lms if all(p.exists() for p in lms)
                                        else None, quality or ""))
    if skipped:
        first = ", ".join(skipped[:6])
        warnings.warn(f"{path}: skipped {len(skipped)} keys that are not videos ({first}); "
                      "DeepfakeBench's rearrange.py writes them beside the videos", stacklevel=3)
    return dataset, videos


def _dfb_landmark(frame: Path) -> Path:
    parts = list(frame.parts)
    if "frames" in parts:
        parts[len(parts) - 1 - parts[::-1].index("frames")] = "landmarks"
    return Path(*parts).with_suffix(".npy")


class _Resolver:
    """Maps DeepfakeBench frame paths (relative to its ``datasets/rgb``, or absolute from the
    authors' machines) to files under root or root/datasets/rgb. The first frame fixes how
    many leading components to drop (the fewest that make it exist) for all the others."""

    def __init__(self, root: Path, source: Path):
        self.bases, self.source = (root, root / "datasets" / "rgb"), source
        self.base: Path | None = None
        self.drop = 0

    def __call__(self, frame: str) -> Path:
        parts = Path(frame.replace("\\", "/")).parts
        if self.base is None:
            self.base, self.drop = next(((base, k) for k in range(len(parts))
                                         for base in self.bases
                                         if (base / Path(*parts[k:])).exists()), (None, 0))
            if self.base is None:
                raise FileNotFoundError(
                    f"{self.source}: frame {frame} not found under {self.bases[0].resolve()} "
                    f"nor {self.bases[1].resolve()}; pass ,root=DIR with DIR DeepfakeBench's "
                    "datasets/rgb folder (its frame paths are relative to it)")
        return self.base / Path(*parts[self.drop:])


class DiskFrames:
    """:class:`csdfd.data.Frames` over face crops on disk (read when asked for)."""

    def __init__(self, videos: list[FaceVideo], crop: bool = True, cfg: SBIConfig = DEFAULT):
        self.videos, self.crop, self.cfg = videos, crop, cfg
        self.keys = [v.key for v in videos]
        self.video = np.repeat(np.arange(len(videos)), [len(v.frames) for v in videos])
        self.row = np.concatenate([np.arange(len(v.frames)) for v in videos]) if videos \
            else np.zeros(0, np.int64)
        self.labels = np.array([videos[i].label for i in self.video], np.int64)
        self._cache: dict[int, np.ndarray] = {}  # landmarks of recently read videos

    def __getstate__(self) -> dict:  # DataLoader workers get a copy without the cache
        return {**self.__dict__, "_cache": {}}

    def _rows(self, i: int) -> np.ndarray:
        if i not in self._cache:
            if len(self._cache) >= 1024:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = self._video_landmarks(i)
        return self._cache[i]

    def __len__(self) -> int:
        return len(self.labels)

    def _video_landmarks(self, i: int) -> np.ndarray:
        v = self.videos[i]
        rows = v.landmark_rows()
        if isinstance(v.landmarks, Path) and len(rows) != len(v.frames):
            # frames were subsampled: the array holds every stored frame in order
            rows = rows[even_indices(len(rows), len(v.frames))]
        return rows

    def raw(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Stored crops [n, H, W, 3] uint8 RGB and their landmarks [n, K, 2]."""
        idx = np.asarray(idx, np.int64)
        imgs = [self._read(int(i)) for i in idx]
        lms = [self._rows(int(self.video[i]))[self.row[i]] for i in idx]
        return np.stack(imgs), np.stack(lms) if lms else np.zeros((0, 68, 2), np.float32)

    def images(self, idx) -> np.ndarray:
        """[n, size, size, 3] uint8 RGB: the evaluation crop (or the stored crop, crop=False)."""
        idx = np.asarray(idx, np.int64)
        if not self.crop:
            return np.stack([self._read(int(i)) for i in idx])
        imgs, lms = self.raw(idx)
        return np.stack([input_crop(im, lm, self.cfg) for im, lm in zip(imgs, lms, strict=True)])

    def landmarks(self, idx) -> np.ndarray:
        """[n, K, 2] float32 landmarks in the frames ``images`` returns."""
        idx = np.asarray(idx, np.int64)
        lms = [self._rows(int(self.video[i]))[self.row[i]] for i in idx]
        if self.crop:
            lms = [eval_crop_landmarks(lm, self.cfg) for lm in lms]
        return np.stack(lms) if lms else np.zeros((0, 68, 2), np.float32)

    def _read(self, i: int) -> np.ndarray:
        path = self.videos[self.video[i]].frames[self.row[i]]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read frame {path} (of {self.keys[self.video[i]]})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def split_frames(videos: list[FaceVideo], split: str, label: int | None = None,
                 exclude: Collection[str] = (), **kwargs) -> DiskFrames:
    """The frames of ``videos`` in ``split`` (and of one ``label`` if given), less the videos
    whose key is in ``exclude``."""
    keep = [v for v in videos if v.split == split and (label is None or v.label == label)
            and v.key not in exclude]
    return DiskFrames(keep, **kwargs)
