"""Forgery families of the synthetic benchmark, each with its own artefact.

Two *source* families play the role of FF++'s manipulations (stream 1's ``xf``):

- ``lowres-swap`` (Deepfakes-like): the inner face of another identity, generated in the target's
  pose by a low-resolution "autoencoder" (area-downsampled 2.5-4x, bilinear upsampled), pasted
  without colour correction (skin-tone mismatch) through a softened landmark-hull mask.
- ``mouth-reenact`` (Face2Face / NeuralTextures-like): the same person with a different mouth
  opening and smile, the mouth region blurred (a smooth "neural" render) and blended back.

Three *target* families stand for unseen datasets and are never used in training or model
selection:

- ``hq-swap`` (Celeb-DF-like): a full-resolution swap, slightly smoothed by its decoder, with
  most of the colour mismatch corrected and a wide feathered mask; what remains are subtle
  blending traces, the kind self-blending teaches.
- ``relit-parts`` (DFDC-like): brows, eyes and nose of another identity lit from another
  direction, in heavily compressed video (the target domain's JPEG quality is low).
- ``gan-decoder``: the whole face re-synthesised by a decoder with nearest-neighbour
  upsampling and a checkerboard pattern (transposed-convolution traces), feathered in.

Each family is a function ``(target, source, frame, size, rng) -> (image float32, landmarks)``
operating before the camera (:func:`csdfd.data.render.finish`), so fakes and reals share the
same noise and compression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from .render import Frame, Identity, render

Family = Callable[
    [Identity, Identity, Frame, int, np.random.Generator], tuple[np.ndarray, np.ndarray]
]

_SHAPE = ("width", "height", "taper", "hair", "hair_len")
INNER = np.r_[2:15, 17:27]  # jaw without the temples, and the brows: the swapped region
PARTS = np.r_[17:48]  # brows, nose, eyes


def swap_identity(target: Identity, source: Identity) -> Identity:
    """The face a swap generator produces: ``source``'s appearance and inner features inside
    ``target``'s head outline and hair."""
    return replace(source, **{k: getattr(target, k) for k in _SHAPE})


def hull_mask(points: np.ndarray, size: int, grow: float = 0.0, blur: float = 0.0) -> np.ndarray:
    """Float mask [size, size] of the convex hull of ``points``, dilated by ``grow`` pixels and
    Gaussian-blurred with sigma ``blur`` pixels."""
    mask = np.zeros((size, size), np.float32)
    hull = cv2.convexHull(np.round(points * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1.0, cv2.LINE_AA, 4)
    if grow > 0:
        k = 2 * int(round(grow)) + 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    if blur > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    return mask


def composite(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """mask * source + (1 - mask) * target."""
    m = mask[..., None]
    return source * m + target * (1 - m)


def _colour_transfer(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match the per-channel mean and std of ``src`` to ``dst`` inside ``mask`` (Reinhard)."""
    w = mask[..., None] / max(float(mask.sum()), 1e-6)
    mu_s, mu_d = (src * w).sum((0, 1)), (dst * w).sum((0, 1))
    sd_s = np.sqrt((((src - mu_s) ** 2) * w).sum((0, 1))) + 1e-3
    sd_d = np.sqrt((((dst - mu_d) ** 2) * w).sum((0, 1))) + 1e-3
    return np.clip((src - mu_s) * (sd_d / sd_s) + mu_d, 0, 255).astype(np.float32)


def lowres_swap(tgt: Identity, src: Identity, fr: Frame, size: int, rng: np.random.Generator):
    """Source family 1: low-resolution generator, colour mismatch, narrow mask."""
    real, lm = render(tgt, fr, size)
    swapped, lm_s = render(swap_identity(tgt, src), fr, size)
    low = max(4, int(round(size / rng.uniform(2.5, 4.0))))
    swapped = cv2.resize(cv2.resize(swapped, (low, low), interpolation=cv2.INTER_AREA),
                         (size, size), interpolation=cv2.INTER_LINEAR)
    mask = hull_mask(np.concatenate([lm[INNER], lm_s[INNER]]), size, 0, size / rng.uniform(40, 70))
    return composite(real, swapped, mask), lm_s


def mouth_reenact(tgt: Identity, src: Identity, fr: Frame, size: int, rng: np.random.Generator):
    """Source family 2: new mouth expression, blurred mouth region (``src`` unused)."""
    real, lm = render(tgt, fr, size)
    fr2 = replace(fr, mouth_open=rng.uniform(0.0, 0.15), smile=rng.uniform(-0.05, 0.08))
    talk, lm2 = render(tgt, fr2, size)
    talk = cv2.GaussianBlur(talk, (0, 0), size / 64 * rng.uniform(0.8, 1.5))
    mask = hull_mask(np.concatenate([lm[48:68], lm2[48:68], lm[[5, 8, 11]]]), size,
                     size / 40, size / 50)
    return composite(real, talk, mask), np.concatenate([lm[:48], lm2[48:]])


def hq_swap(tgt: Identity, src: Identity, fr: Frame, size: int, rng: np.random.Generator):
    """Target family 1: full-resolution swap from a decoder slightly smoother than the camera,
    mostly colour-corrected, through a wide feathered mask."""
    real, lm = render(tgt, fr, size)
    swapped, lm_s = render(swap_identity(tgt, src), fr, size)
    swapped = cv2.GaussianBlur(swapped, (0, 0), size / 64 * rng.uniform(0.4, 0.8))
    mask = hull_mask(np.concatenate([lm[:27], lm_s[:27]]), size, 0, size / rng.uniform(15, 30))
    matched = _colour_transfer(swapped, real, mask)
    w = rng.uniform(0.6, 0.9)  # how much of the colour mismatch the tool corrected
    return composite(real, w * matched + (1 - w) * swapped, mask), lm_s


def relit_parts(tgt: Identity, src: Identity, fr: Frame, size: int, rng: np.random.Generator):
    """Target family 2: brows/eyes/nose of another identity under another light."""
    real, lm = render(tgt, fr, size)
    az = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(az), np.sin(az), 0.8])
    fr2 = replace(fr, light=light / np.linalg.norm(light), diffuse=rng.uniform(0.3, 0.6))
    parts, lm_s = render(swap_identity(tgt, src), fr2, size)
    mask = hull_mask(np.concatenate([lm[PARTS], lm_s[PARTS]]), size, size / 40, size / 40)
    lm_out = np.concatenate([lm[:17], lm_s[17:48], lm[48:]])
    return composite(real, parts, mask), lm_out


def gan_decoder(tgt: Identity, src: Identity, fr: Frame, size: int, rng: np.random.Generator):
    """Target family 3: decoder with nearest upsampling + checkerboard, feathered (``src``
    unused)."""
    real, lm = render(tgt, fr, size)
    half = cv2.resize(real, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    fake = cv2.resize(half, (size, size), interpolation=cv2.INTER_NEAREST)
    checker = (np.indices((size, size)).sum(0) % 2 * 2 - 1).astype(np.float32)
    fake = fake + checker[..., None] * rng.uniform(2.0, 5.0) + rng.normal(0, 4, 3)
    mask = hull_mask(lm[:27], size, 0, size / 30)
    return composite(real, fake.astype(np.float32), mask), lm


SOURCE_FAMILIES: dict[str, Family] = {
    "lowres-swap": lowres_swap,
    "mouth-reenact": mouth_reenact,
}
TARGET_FAMILIES: dict[str, Family] = {
    "hq-swap": hq_swap,
    "relit-parts": relit_parts,
    "gan-decoder": gan_decoder,
}
#: Capture conditions of each target domain: JPEG quality range and directional-light strength.
TARGET_CAPTURE: dict[str, dict] = {
    "hq-swap": {"quality": (85, 98), "light": 0.3},
    "relit-parts": {"quality": (35, 60), "light": 0.6},
    "gan-decoder": {"quality": (60, 90), "light": 0.5},
}

