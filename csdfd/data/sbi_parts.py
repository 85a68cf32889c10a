"""Building blocks of Self-Blended Images (Shiohara and Yamasaki, CVPR 2022), each with the
numbers of the published code (mapooon/SelfBlendedImages: ``src/utils/sbi.py``, ``blend.py``,
``funcs.py``; the hulls of the Face X-ray library it loads, AlgoHunt/Face-Xray
``DeepFakeMask.py``). :mod:`csdfd.data.sbi` assembles them into the algorithm.

The colour operations follow the lookup-table semantics of the albumentations 1.x transforms SBI
calls (``RGBShift``, ``HueSaturationValue``, ``RandomBrightnessContrast``): the shifted value is
clipped to [0, 255] and truncated to an integer, as ``astype(uint8)`` does. That is why SBI's HSV
shift of +-0.3 (in OpenCV's uint8 H, S, V units) is a tiny jitter, at most one level down: we keep
it, since it is what the published model was trained with.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

_X = np.arange(256, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# colour (STG and the shared post-augmentation)


class Colour(NamedTuple):
    """One draw of SBI's colour jitter; ``None`` where the transform was not applied."""

    rgb: np.ndarray | None  # [3] additive R, G, B shifts, 0..255 scale
    hsv: np.ndarray | None  # [3] additive H, S, V shifts in OpenCV uint8 units (H: 180 a turn)
    gain_bias: tuple[float, float] | None  # contrast gain 1 + c, brightness b (fraction of 255)


class ColourSpec(NamedTuple):
    """Probability and limit of each colour transform, in the order SBI applies them."""

    p_rgb: float
    rgb: float
    p_hsv: float
    hsv: float
    p_bc: float
    brightness: float
    contrast: float


def sample_colour(rng: np.random.Generator, spec: ColourSpec) -> Colour:
    """Each transform with its probability; shifts uniform in +-limit (contrast: gain 1 +- c)."""
    rgb = rng.uniform(-spec.rgb, spec.rgb, 3) if rng.random() < spec.p_rgb else None
    hsv = rng.uniform(-spec.hsv, spec.hsv, 3) if rng.random() < spec.p_hsv else None
    bc = None
    if rng.random() < spec.p_bc:
        bc = (1.0 + rng.uniform(-spec.contrast, spec.contrast),
              rng.uniform(-spec.brightness, spec.brightness))
    return Colour(rgb, hsv, bc)


def _table(values: np.ndarray) -> np.ndarray:
    """Clip to [0, 255] and truncate, as albumentations' ``astype(uint8)`` does."""
    return np.clip(values, 0, 255).astype(np.uint8)


def apply_colour(img: np.ndarray, c: Colour) -> np.ndarray:
    """RGB shift, then HSV shift, then brightness / contrast (SBI's order), as lookup tables."""
    if c.rgb is None and c.hsv is None and c.gain_bias is None:
        return img
    rgb = _X[:, None] + (c.rgb[None, :] if c.rgb is not None else 0.0)
    bc = None if c.gain_bias is None else _table(_X * c.gain_bias[0] + c.gain_bias[1] * 255.0)
    if c.hsv is None:  # no HSV in between: both tables compose into one
        lut = _table(np.broadcast_to(rgb, (256, 3)))
        lut = lut if bc is None else bc[lut]
        return cv2.LUT(img, np.ascontiguousarray(lut).reshape(1, 256, 3))
    out = img if c.rgb is None else cv2.LUT(img, _table(rgb).reshape(1, 256, 3))
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # always round-trips, as albumentations does
    lut_h = np.mod(_X + c.hsv[0], 180.0).astype(np.uint8)
    lut_sv = _table(_X[:, None] + c.hsv[None, 1:])
    lut = np.concatenate([lut_h[:, None], lut_sv], axis=1)
    out = cv2.cvtColor(cv2.LUT(hsv, np.ascontiguousarray(lut).reshape(1, 256, 3)),
                       cv2.COLOR_HSV2RGB)
    return out if bc is None else cv2.LUT(out, bc)


# ---------------------------------------------------------------------------------------------
# frequency (STG) and JPEG (post-augmentation)


class Frequency(NamedTuple):
    """SBI's ``OneOf(RandomDownScale, Sharpen)``: ``ratio`` set for the former, else the latter."""

    ratio: int | None  # downscale factor (2 or 4)
    alpha: float  # Sharpen's alpha
    lightness: float  # Sharpen's lightness


def sample_frequency(rng: np.random.Generator, ratios: tuple[int, ...],
                     alpha: tuple[float, float],
                     lightness: tuple[float, float]) -> Frequency:
    """Downscaling (a ratio drawn from ``ratios``) or Sharpen (alpha, lightness uniform)."""
    if rng.random() < 0.5:  # OneOf of two transforms with p = 1: each half of the time
        return Frequency(int(ratios[rng.integers(len(ratios))]), 0.0, 1.0)
    return Frequency(None, rng.uniform(*alpha), rng.uniform(*lightness))


def sharpen_kernel(alpha: float, lightness: float) -> np.ndarray:
    """(1 - alpha) * identity + alpha * [[-1, -1, -1], [-1, 8 + lightness, -1], [-1, -1, -1]].

    It sums to 1 - alpha * (1 - lightness), so it also darkens by up to 25 %, as SBI's does."""
    k = np.full((3, 3), -alpha, np.float32)
    k[1, 1] = 1.0 - alpha + alpha * (8.0 + lightness)
    return k


def apply_frequency(img: np.ndarray, f: Frequency) -> np.ndarray:
    h, w = img.shape[:2]
    if f.ratio is not None:  # nearest down, linear up: aliasing and blur, as SBI's
        small = cv2.resize(img, (max(1, int(w / f.ratio)), max(1, int(h / f.ratio))),
                           interpolation=cv2.INTER_NEAREST)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.filter2D(img, -1, sharpen_kernel(f.alpha, f.lightness),
                        borderType=cv2.BORDER_REFLECT_101)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip; RGB is converted to OpenCV's BGR so that chroma is subsampled right."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------
# hulls (Face X-ray's DeepFakeMask, which SBI's random_get_hull draws from uniformly)

HULLS = ("dfl_full", "extended", "components", "facehull")
_R = np.r_
#: DeepFaceLab's full mask: jaw with mouth, nose ridge, brows with the face's corners.
DFL_FULL = (_R[0:17, 48:68, 0, 8, 16], _R[27:31, 33], _R[17:27, 0, 27, 16, 33])
#: The eight parts of the component mask (jaw halves, cheeks, nose ridge, eyes, nose).
COMPONENTS = (_R[0:9, 17], _R[8:17, 26], _R[17:20, 8], _R[24:27, 8], _R[19:25, 8],
              _R[17:22, 27, 31:36, 8], _R[22:27, 27, 31:36, 8], _R[27:31, 31:36])


def raise_brows(lm: np.ndarray) -> np.ndarray:
    """The "extended" hull's landmarks: each brow moved up by half its height above a line
    through the eye's upper lid (the lid points, and a point a quarter way to the face side)."""
    out = lm[:68].astype(np.float32).copy()
    ql = lm[36] + ((lm[36] + lm[0]) / 2 - lm[36]) / 2
    qr = lm[45] + ((lm[16] + lm[45]) / 2 - lm[45]) / 2
    bot_l = np.stack([ql, lm[36], lm[37], lm[38], lm[39]])
    bot_r = np.stack([lm[42], lm[43], lm[44], lm[45], qr])
    out[17:22] += (lm[17:22] - bot_l) / 2
    out[22:27] += (lm[22:27] - bot_r) / 2
    return out


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], variant: str) -> np.ndarray:
    """Float32 mask in [0, 1] of ``shape`` (H, W): the union of filled convex hulls.

    ``dfl_full``: three hulls (jaw with mouth, nose ridge, brows). ``components``: eight part
    hulls. ``extended``: the same eight parts with the brows raised (:func:`raise_brows`).
    ``facehull``: one hull of every point, anti-aliased; with 81 points it reaches the forehead
    (the other three use only the first 68 points, as in Face X-ray's code).
    """
    lm = np.asarray(landmarks, np.float32)
    if variant == "dfl_full":
        parts = [lm[i] for i in DFL_FULL]
    elif variant == "components":
        parts = [lm[i] for i in COMPONENTS]
    elif variant == "extended":
        up = raise_brows(lm)
        parts = [up[i] for i in COMPONENTS]
    elif variant == "facehull":
        parts = [lm]
    else:
        raise ValueError(f"unknown hull variant {variant!r}; choose one of {HULLS}")
    line = cv2.LINE_AA if variant == "facehull" else cv2.LINE_8
    mask = np.zeros(shape, np.uint8)
    for p in parts:  # 4 fractional bits: sub-pixel polygon edges
        hull = cv2.convexHull(np.round(p * 16.0).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, lineType=line, shift=4)
    return mask.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# mask deformation and blur (SBI's randaffine's elastic part and get_blend_mask)


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, alpha: float,
                  sigma: float) -> np.ndarray:
    """[2, H, W] displacements of albumentations' ElasticTransform: uniform(-1, 1) noise
    smoothed by a Gaussian of ``sigma`` pixels, times ``alpha``.

    The field is drawn on a grid ``d`` times coarser (noise smoothed by sigma / d, rescaled to
    the same variance) and upsampled linearly: the same variance and correlation length as
    SBI's fields, at 1 / d^2 of the cost.
    """
    h, w = shape
    d = max(1, int(sigma // 2))
    hc, wc = -(-h // d) + 1, -(-w // d) + 1
    s = sigma / d
    k = 2 * int(4.0 * s + 0.5) + 1  # scipy's gaussian_filter support (truncate = 4)
    noise = rng.random((2, hc, wc), dtype=np.float32) * 2.0 - 1.0
    out = np.empty((2, h, w), np.float32)
    for i in range(2):
        smooth = cv2.GaussianBlur(noise[i], (k, k), s, borderType=cv2.BORDER_REFLECT)
        out[i] = cv2.resize(smooth, (wc * d, hc * d), interpolation=cv2.INTER_LINEAR)[:h, :w]
    # SBI's spread: the std of smoothed white noise scales with the 1-D kernel's squared norm
    # (1 / d from fine to coarse in the continuum; the discrete kernels' ratio exactly)
    fine = cv2.getGaussianKernel(2 * int(4.0 * sigma + 0.5) + 1, sigma)
    coarse = cv2.getGaussianKernel(k, s)
    out *= alpha * float((fine ** 2).sum() / (coarse ** 2).sum())
    return out


def elastic(mask: np.ndarray, rng: np.random.Generator, alpha: float,
            sigma: float) -> np.ndarray:
    """Elastic warp of the mask, nearest-neighbour as albumentations warps masks."""
    h, w = mask.shape
    dx, dy = elastic_field((h, w), rng, alpha, sigma)
    dx += np.arange(w, dtype=np.float32)[None, :]
    dy += np.arange(h, dtype=np.float32)[:, None]
    return cv2.remap(mask, dx, dy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)


class Blur(NamedTuple):
    """One draw of SBI's two-stage mask blur."""

    size: tuple[int, int]  # (w, h) the mask is resized to for blurring
    k1: int  # first Gaussian's kernel (sigma from the kernel size); its maximum is kept
    k2: int  # second Gaussian's kernel
    sigma2: float  # second Gaussian's sigma


def sample_blur(rng: np.random.Generator, sizes: tuple[int, int], kernels: tuple[int, int],
                sigmas: tuple[int, int]) -> Blur:
    """Sizes and sigma: integers in the closed ranges; kernels: odd sides in the range."""
    w, h = rng.integers(sizes[0], sizes[1] + 1, 2)
    odd = np.arange(kernels[0], kernels[1] + 1, 2)
    k1, k2 = rng.choice(odd, 2)
    return Blur((int(w), int(h)), int(k1), int(k2), float(rng.integers(sigmas[0], sigmas[1] + 1)))


def soften(mask: np.ndarray, b: Blur) -> np.ndarray:
    """SBI's blend mask: blur, keep only the pixels at the maximum (the hull eroded by about
    half the kernel), blur again, peak 1; computed at ``b.size`` and resized back."""
    h, w = mask.shape
    small = cv2.resize(mask, b.size, interpolation=cv2.INTER_LINEAR)
    first = cv2.GaussianBlur(small, (b.k1, b.k1), 0)
    peak = float(first.max())
    if peak <= 0:  # an empty hull (landmarks off the image): nothing is blended
        return np.zeros_like(mask)
    core = (first >= peak).astype(np.float32)
    soft = cv2.GaussianBlur(core, (b.k2, b.k2), b.sigma2)
    soft /= float(soft.max())
    return cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)
