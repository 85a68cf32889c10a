"""Real face photographs shipped in wheels, for the data tests (no download at test time).

skimage's ``astronaut`` (Eileen Collins) and matplotlib's ``grace_hopper.jpg``, with their dlib
68-point landmarks computed once with ``shape_predictor_68_face_landmarks`` (test_preprocess
checks these constants against dlib whenever dlib is installed), and skimage's ``lfw_subset``
(100 small faces followed by 100 non-face patches).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

# dlib 68-point landmarks (x, y) on the full photographs
LANDMARKS = {
    "astronaut": [
        179, 104, 179, 116, 180, 127, 181, 139, 185, 151, 191, 160, 200, 169, 209, 176, 221, 178,
        232, 177, 243, 171, 253, 164, 260, 154, 265, 144, 268, 132, 270, 120, 272, 108, 186, 94,
        192, 88, 200, 87, 208, 89, 216, 92, 236, 93, 244, 91, 252, 91, 260, 92, 265, 98, 225,
        103, 225, 111, 225, 119, 225, 127, 214, 131, 219, 132, 224, 134, 229, 133, 234, 132, 195,
        101, 200, 98, 207, 98, 212, 104, 206, 104, 199, 104, 238, 105, 244, 101, 250, 101, 255,
        104, 250, 107, 244, 106, 201, 140, 209, 139, 218, 139, 223, 141, 229, 140, 237, 140, 245,
        141, 237, 151, 229, 155, 222, 156, 216, 155, 208, 150, 204, 141, 217, 143, 223, 144, 229,
        143, 243, 142, 229, 150, 223, 150, 217, 150,
    ],
    "grace_hopper": [
        181, 202, 185, 225, 190, 248, 195, 270, 204, 290, 217, 307, 234, 319, 254, 328, 276, 331,
        299, 326, 320, 316, 338, 302, 353, 286, 363, 265, 366, 242, 368, 217, 369, 192, 186, 182,
        194, 165, 210, 159, 228, 161, 243, 169, 282, 166, 297, 156, 316, 153, 334, 157, 346, 171,
        264, 191, 265, 206, 266, 222, 266, 238, 245, 247, 256, 250, 268, 253, 279, 250, 289, 246,
        207, 199, 216, 192, 227, 191, 239, 198, 228, 201, 216, 202, 294, 195, 304, 187, 316, 186,
        327, 190, 318, 195, 306, 196, 233, 278, 245, 274, 257, 272, 266, 274, 275, 271, 291, 273,
        309, 272, 292, 286, 278, 290, 268, 291, 259, 291, 246, 287, 239, 278, 258, 280, 267, 280,
        276, 279, 302, 274, 276, 279, 268, 280, 258, 280,
    ],
}
#: dlib frontal-detector boxes (left, top, right, bottom) at upsample 0
BOXES = {"astronaut": (179, 83, 266, 170), "grace_hopper": (161, 137, 376, 352)}


def photo(name: str) -> np.ndarray:
    """The full photograph as uint8 RGB; skips the test if its package is missing."""
    if name == "astronaut":
        data = pytest.importorskip("skimage.data", reason="scikit-image ships the photo")
        return data.astronaut()
    if name == "grace_hopper":
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
        return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    raise KeyError(name)


def landmarks(name: str) -> np.ndarray:
    return np.asarray(LANDMARKS[name], np.float32).reshape(68, 2)


def face_crop(name: str, size: int = 256, margin: float = 1.8) -> tuple[np.ndarray, np.ndarray]:
    """A square crop centred on the landmarks, as preprocessing makes: (image, landmarks)."""
    img, lm = photo(name), landmarks(name)
    centre = (lm.min(axis=0) + lm.max(axis=0)) / 2
    s = size / (float((lm.max(axis=0) - lm.min(axis=0)).max()) * margin)
    affine = np.array([[s, 0, size / 2 - centre[0] * s], [0, s, size / 2 - centre[1] * s]],
                      np.float32)
    crop = cv2.warpAffine(img, affine, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    return crop, (lm * s + (size / 2 - centre * s)).astype(np.float32)


def lfw(faces: bool, n: int, size: int = 160) -> list[np.ndarray]:
    """``n`` upscaled grey images from lfw_subset as RGB: faces or the non-face patches."""
    data = pytest.importorskip("skimage.data", reason="scikit-image ships lfw_subset")
    images = data.lfw_subset()[:100] if faces else data.lfw_subset()[100:]
    out = []
    for im in images[:n]:
        grey = cv2.resize((im * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))
    return out


def write_face_video(path, name: str, n: int = 24, width: int = 320, height: int = 240,
                     face: int = 150) -> list[tuple[float, float, float, float]]:
    """An mp4 of the photo's face moving left to right and growing (0.7x to 1.1x) over a flat
    background; returns the pasted face square (left, top, right, bottom) of every frame."""
    crop, _ = face_crop(name, size=face, margin=1.6)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    boxes = []
    for t in range(n):
        side = int(face * (0.7 + 0.4 * t / max(n - 1, 1)))
        x = int(5 + (width - side - 10) * t / max(n - 1, 1))
        y = int((height - side) / 2 + 8 * np.sin(t / 4))
        frame = np.full((height, width, 3), (60, 90, 120), np.uint8)
        frame[y:y + side, x:x + side] = cv2.resize(crop, (side, side))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        boxes.append((x, y, x + side, y + side))
    writer.release()
    return boxes


def write_plain_video(path, n: int = 12, width: int = 160, height: int = 120) -> None:
    """An mp4 without any face (moving gradient), frame t's mean grey level growing with t."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    for t in range(n):
        level = np.clip(ramp + t * 180 / max(n - 1, 1), 0, 255)
        writer.write(np.broadcast_to(level, (height, width, 3)).astype(np.uint8))
    writer.release()
