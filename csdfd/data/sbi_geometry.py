"""Geometry of Self-Blended Images (:mod:`csdfd.data.sbi`): the horizontal flip of 68- and
81-point landmarks, the final crop, and the blend frame the self-blend is made in.

SBI (mapooon/SelfBlendedImages, ``funcs.crop_face``) blends in a first crop around the face and
cuts the training crop out of it afterwards. Here that first crop, the *frame*, is resampled so
that the final crop lands on it at whole pixels and exactly ``size`` wide: the final crop is
then a slice, and the frame is only ever read in the boxes the blend needs (:func:`reader`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in frame pixels, end exclusive
Reader = Callable[[Box], np.ndarray]  # the frame's pixels in a box inside it (uint8 RGB)

#: The forehead points 68..80 of the 81-point model (codeniko's), from the image's left to its
#: right: the order SBI's ``reorder_landmark`` puts them in.
FOREHEAD_ORDER = (77, 75, 76, 68, 69, 70, 71, 80, 72, 73, 79, 74, 78)


def _mirror_permutation() -> np.ndarray:
    """Index map of the 81 points under a horizontal flip (left jaw <-> right jaw, ...; the
    k-th and the (12 - k)-th forehead point of :data:`FOREHEAD_ORDER`)."""
    perm = np.arange(81)
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    pairs += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    pairs += [(FOREHEAD_ORDER[k], FOREHEAD_ORDER[12 - k]) for k in range(6)]
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR_81 = _mirror_permutation()
MIRROR_68 = MIRROR_81[:68]


def hflip(img: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and landmarks; points are re-indexed so that 36 stays the right eye's corner
    (and, with 81 points, each forehead point keeps its place in the row)."""
    out = np.ascontiguousarray(img[:, ::-1])
    lm = landmarks[MIRROR_81[: len(landmarks)]].copy()
    lm[:, 0] = img.shape[1] - lm[:, 0]
    return out, lm


def crop_box(lm: np.ndarray, margins: np.ndarray) -> tuple[float, float, float, float]:
    """The landmark box grown by ``margins`` (left, right, top, bottom; fractions of the box)."""
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    return (x0 - margins[0] * bw, y0 - margins[2] * bh, x1 + margins[1] * bw,
            y1 + margins[3] * bh)


def crop_affine(lm: np.ndarray, margins: np.ndarray, size: int) -> np.ndarray:
    """[2, 3] map from image pixels to the ``size`` x ``size`` crop of :func:`crop_box`."""
    cx0, cy0, cx1, cy1 = crop_box(lm, margins)
    sx, sy = size / (cx1 - cx0), size / (cy1 - cy0)
    return np.array([[sx, 0, -cx0 * sx], [0, sy, -cy0 * sy]], np.float32)


def move(lm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (lm @ affine[:, :2].T + affine[:, 2]).astype(np.float32)


class Frame(NamedTuple):
    affine: np.ndarray  # [2, 3] image pixels -> frame pixels
    shape: tuple[int, int]  # (h, w) of the frame
    offset: tuple[int, int]  # (x, y) of the final crop in the frame
    box: tuple[float, float]  # (w, h) of SBI's first crop, frame pixels (unclipped)
    region: Box  # the final crop grown to JPEG's 16 x 16 block grid of the frame, plus a block


def frame(lm: np.ndarray, shape: tuple[int, ...], margins: np.ndarray,
          first: tuple[float, float, float, float], size: int) -> Frame:
    """The blend frame at output resolution: SBI's first crop (the 68-point box grown by
    ``first``, left, right, top, bottom) clipped to the image, joined with the final crop (whose
    part off the image is black), scaled so that the final crop is ``size`` pixels wide and high
    and sits at whole-pixel offsets."""
    cx0, cy0, cx1, cy1 = crop_box(lm, margins)
    sx, sy = size / (cx1 - cx0), size / (cy1 - cy0)
    bx0, by0, bx1, by1 = crop_box(lm[:68], np.asarray(first))
    fx0, fy0 = min(max(bx0, 0.0), cx0), min(max(by0, 0.0), cy0)
    fx1, fy1 = max(min(bx1, shape[1]), cx1), max(min(by1, shape[0]), cy1)
    ox, oy = math.ceil(sx * (cx0 - fx0) - 1e-3), math.ceil(sy * (cy0 - fy0) - 1e-3)
    w = ox + max(size, math.ceil(sx * (fx1 - cx0) - 1e-3))
    h = oy + max(size, math.ceil(sy * (fy1 - cy0) - 1e-3))
    affine = np.array([[sx, 0, ox - sx * cx0], [0, sy, oy - sy * cy0]], np.float32)
    # JPEG codes 16 x 16 blocks, and the decoder's chroma upsampling reads into the next one
    region = (max(0, 16 * (ox // 16 - 1)), max(0, 16 * (oy // 16 - 1)),
              min(w, 16 * (-(-(ox + size) // 16) + 1)), min(h, 16 * (-(-(oy + size) // 16) + 1)))
    return Frame(affine, (h, w), (ox, oy), (sx * (bx1 - bx0), sy * (by1 - by0)), region)


def reader(img: np.ndarray, f: Frame) -> Reader:
    """The frame's pixels in a box, resampled from ``img`` on demand (never the whole frame)."""
    def read(b: Box) -> np.ndarray:
        a = f.affine.copy()
        a[:, 2] -= b[:2]
        return cv2.warpAffine(img, a, (b[2] - b[0], b[3] - b[1]), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
    return read


def preimage(affine: np.ndarray, box: Box, pad: int, shape: tuple[int, int]) -> Box:
    """The box of pixels that ``affine`` sends into ``box``, grown by ``pad``, clipped to
    ``shape``."""
    inv = cv2.invertAffineTransform(affine)
    x0, y0, x1, y1 = box
    p = move(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float32), inv)
    (a0, b0), (a1, b1) = np.floor(p.min(axis=0)), np.ceil(p.max(axis=0))
    return (max(0, int(a0) - pad), max(0, int(b0) - pad),
            min(shape[1], int(a1) + pad), min(shape[0], int(b1) + pad))
