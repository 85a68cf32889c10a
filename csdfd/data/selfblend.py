"""Simple self-blending: stream 2's online fakes ``xs`` made from one real face and its landmarks.

A light version of SBI (Shiohara and Yamasaki, CVPR 2022; the full algorithm is
:mod:`csdfd.data.sbi`): a source copy of the face gets a colour jitter (gain, bias, contrast),
a frequency jitter (blur or sharpening) and a small scale/shift; a mask is drawn from the convex
hull of the landmarks, eroded or dilated, blurred, and scaled by a random blend ratio; then
``fake = mask * source + (1 - mask) * img``. What the detector can learn from it is generic:
a blending boundary and a source/target mismatch, with no identity change.

This is the ``"simple"`` entry of :data:`csdfd.data.BLENDS`; every entry has the signature of
:func:`self_blend`.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Blend ratios: a fully pasted source twice as often as each partial one (SBI's choice).
RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
_HULLS = (np.r_[0:27], np.r_[2:15, 17:27], np.r_[0:17, 19, 24])


def check_face(img: np.ndarray, landmarks: np.ndarray) -> None:
    """Reject inputs that cannot be blended, naming the problem."""
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3
            and img.dtype == np.uint8):
        got = getattr(img, "shape", type(img).__name__), getattr(img, "dtype", "")
        raise ValueError(f"img must be an HxWx3 uint8 RGB array, got {got}")
    lm = np.asarray(landmarks)
    if lm.ndim != 2 or lm.shape[0] < 68 or lm.shape[1] != 2 or not np.isfinite(lm).all():
        raise ValueError(
            f"landmarks must be a finite [68, 2] array of (x, y) pixels, got shape {lm.shape}"
        )


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour (per-channel gain and bias, contrast) and frequency (blur or sharpen) jitter."""
    h = img.shape[0]
    out = img * rng.uniform(0.88, 1.12, 3).astype(np.float32) + rng.uniform(-12, 12, 3)
    mean = out.mean((0, 1))
    out = (out - mean) * rng.uniform(0.85, 1.15) + mean
    sigma = h / 64 * rng.uniform(0.5, 1.5)
    blurred = cv2.GaussianBlur(out.astype(np.float32), (0, 0), sigma)
    if rng.uniform() < 0.5:
        return blurred
    return out + rng.uniform(0.3, 1.0) * (out - blurred)  # unsharp mask


def _mask(lm: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Landmark-hull mask, randomly eroded or dilated, blurred, peak renormalised to 1."""
    h, w = shape
    pts = lm[_HULLS[rng.integers(len(_HULLS))]]
    mask = np.zeros((h, w), np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts * 16).astype(np.int32)), 1.0,
                       cv2.LINE_AA, 4)
    k = 2 * int(rng.integers(0, max(2, h // 24))) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.erode(mask, kernel) if rng.uniform() < 0.5 else cv2.dilate(mask, kernel)
    mask = cv2.GaussianBlur(mask, (0, 0), h * rng.uniform(1 / 64, 1 / 20))
    return mask / max(float(mask.max()), 1e-6)


def self_blend(
    img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One self-blended fake of ``img`` (uint8 HxWx3 RGB) from its 68 (x, y) landmarks.

    Returns ``(fake uint8 HxWx3, mask float32 HxW in [0, 1])``; every random choice comes from
    ``rng``, so the output is a function of the generator state.
    """
    check_face(img, landmarks)
    lm = np.asarray(landmarks, np.float32)[:68]
    h, w = img.shape[:2]
    base = img.astype(np.float32)
    source = _jitter(base, rng)
    centre = lm.mean(0)
    s = rng.uniform(0.96, 1.04)
    shift = rng.uniform(-0.02, 0.02, 2) * (w, h)
    affine = np.array([[s, 0, (1 - s) * centre[0] + shift[0]],
                       [0, s, (1 - s) * centre[1] + shift[1]]], np.float32)
    source = cv2.warpAffine(source, affine, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    mask = _mask(lm, (h, w), rng) * RATIOS[rng.integers(len(RATIOS))]
    m = mask[..., None]
    fake = source * m + base * (1 - m)
    return np.clip(fake + 0.5, 0, 255).astype(np.uint8), mask
