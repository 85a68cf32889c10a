"""Self-Blended Images (SBI): Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended
Images", CVPR 2022, section 3. Stream 2 of CS-DFD (METHOD.md section 1) trains on these.

A pseudo-fake is made from one real face and its landmarks. Two copies of the face, the
*source* and the *target*, are made slightly different by the source-target generator (STG:
colour and frequency augmentation of one of the two, then a small resize and shift of the
source); the mask generator (MG) draws a convex hull of the landmarks (one of several variants),
deforms it (the source's affine transform plus an elastic warp), blurs it in two stages and
scales it by a random blend ratio; the source is then alpha-blended onto the target. The result
carries the generic traces of face forgeries (blending boundary, colour and frequency mismatch,
landmark mismatch) without an identity change, which is why a detector trained on it
generalises.

For training, the real face and its pseudo-fake then go through the *same* random crop, flip and
post-augmentation (colour, JPEG), so that only the blending tells them apart (:func:`sbi_pair`).

Every random choice comes from one ``numpy.random.Generator``, so a sample is a function of the
seed. All work is whole-image OpenCV / numpy operations (no per-pixel Python); one 256 x 256
sample takes a few milliseconds on one core (``pytest bench/bench_sbi.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

#: iBUG 68-point landmark groups (dlib's 68-point model; the 81-point model adds 13 forehead
#: points after these 68).
JAW, BROWS, NOSE = np.arange(0, 17), np.arange(17, 27), np.arange(27, 36)
RIGHT_EYE, LEFT_EYE, MOUTH = np.arange(36, 42), np.arange(42, 48), np.arange(48, 68)
HULLS = ("full", "extended", "inner", "components")


def _mirror_permutation() -> np.ndarray:
    """Index map of the 68 points under a horizontal flip (left jaw <-> right jaw, ...)."""
    perm = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    pairs += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR_68 = _mirror_permutation()


@dataclass(frozen=True)
class SBIConfig:
    """Ranges of every random choice. Pixel sizes are given at 256 x 256 and scale with ``size``.

    The paper fixes the structure (STG, MG, blend ratio, shared post-augmentation); the ranges
    below are our choices of the same order as the paper's description.
    """

    size: int = 256  # output side of sbi_pair (the project's crops are 256 x 256)
    # random crop margins around the landmark box, fraction of its width / height per side
    crop_margin: tuple[float, float] = (0.04, 0.20)
    crop_top_extra: float = 0.1  # 68 points stop at the brows: keep some forehead above them
    p_flip: float = 0.5
    # STG colour + frequency augmentation, applied to the source (else to the target)
    p_augment_source: float = 0.5
    rgb_shift: float = 20.0  # per-channel additive shift, 0..255 scale
    hue_shift: float = 10.0  # OpenCV hue units (180 = a full turn)
    sat_shift: float = 30.0
    val_shift: float = 20.0
    brightness: float = 0.1  # additive, fraction of 255
    contrast: float = 0.1  # gain in 1 +- contrast
    # STG frequency augmentation: down-and-up-sampling (else unsharp masking)
    p_downscale: float = 0.5
    downscale: tuple[float, float] = (0.25, 0.5)
    sharpen: tuple[float, float] = (0.5, 1.5)  # unsharp-mask amount
    # STG geometry of the source (landmark mismatch)
    source_scale: tuple[float, float] = (0.95, 1 / 0.95)
    source_translate: float = 0.03  # fraction of the side
    # MG
    hulls: tuple[str, ...] = HULLS
    brow_lift: tuple[float, float] = (0.3, 0.8)  # "extended" hull: brows raised by this x nose
    elastic_sigma: float = 4.0  # std of the elastic displacement, pixels
    elastic_grid: int = 5  # control points per side of the smooth displacement field
    blur_kernel: tuple[float, float] = (5.0, 27.0)  # two Gaussian blurs, kernel side in pixels
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    mask_scale: float = 0.5  # the mask is built at this fraction of the image size (speed)
    # post-augmentation shared by real and fake
    p_post_colour: float = 1.0
    jpeg_quality: tuple[int, int] = (40, 100)
    p_jpeg: float = 0.5

    def __post_init__(self) -> None:
        bad = [h for h in self.hulls if h not in HULLS]
        if bad or not self.hulls:
            raise ValueError(f"hulls must be a non-empty subset of {HULLS}, but got {self.hulls}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16, but got {self.size}")
        if not 0 < self.mask_scale <= 1:
            raise ValueError(f"mask_scale must be in (0, 1], but got {self.mask_scale}")


DEFAULT = SBIConfig()


class SBISample(NamedTuple):
    """A training pair: identically cropped and post-augmented real and self-blended fake."""

    real: np.ndarray  # [size, size, 3] uint8 RGB
    fake: np.ndarray  # [size, size, 3] uint8 RGB
    mask: np.ndarray  # [size, size] float32 in [0, 1]: blend weight of the source
    landmarks: np.ndarray  # [K, 2] float32, in the output crop


def check_face(img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Validate an (image, landmarks) pair; returns landmarks as float32 [K, 2]."""
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
            and img.shape[2] == 3):
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"img must be a uint8 [H, W, 3] RGB array, but got {got}")
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (68, 81):
        raise ValueError(f"landmarks must be [68, 2] or [81, 2] (x, y) pixels, but got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks contain NaN or infinity")
    return lm


# ---------------------------------------------------------------------------------------------
# colour and frequency augmentation (STG, and the shared post-augmentation)


class _Colour(NamedTuple):
    gain: float
    bias: np.ndarray  # [3] additive, 0..255 scale (RGB shift + brightness)
    hsv: np.ndarray  # [3] shifts of H, S, V


def _sample_colour(rng: np.random.Generator, cfg: SBIConfig) -> _Colour:
    shift = rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, 3)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    gain = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    hsv = rng.uniform(-1.0, 1.0, 3) * (cfg.hue_shift, cfg.sat_shift, cfg.val_shift)
    return _Colour(gain, shift + brightness, hsv)


_X = np.arange(256, dtype=np.float32)


def _apply_colour(img: np.ndarray, c: _Colour) -> np.ndarray:
    """RGB shift, brightness and contrast as one per-channel lookup table, then an HSV shift."""
    lut = np.clip(_X[:, None] * c.gain + c.bias[None, :], 0, 255)
    out = cv2.LUT(img, np.round(lut).astype(np.uint8).reshape(1, 256, 3))
    if not c.hsv.any():  # the uint8 HSV round trip is lossy: skip it when it would do nothing
        return out
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # uint8: H in [0, 180)
    lut_h = np.mod(np.round(_X + c.hsv[0]), 180.0)
    lut_sv = np.clip(np.round(_X[:, None] + c.hsv[None, 1:]), 0, 255)
    lut = np.concatenate([lut_h[:, None], lut_sv], axis=1).astype(np.uint8)
    return cv2.cvtColor(cv2.LUT(hsv, lut.reshape(1, 256, 3)), cv2.COLOR_HSV2RGB)


def _frequency(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    """Either lose high frequencies (down- then up-sampling) or boost them (unsharp mask)."""
    h, w = img.shape[:2]
    if rng.random() < cfg.p_downscale:
        s = rng.uniform(*cfg.downscale)
        small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    amount = rng.uniform(*cfg.sharpen)
    kernel = np.full((3, 3), -amount / 9.0, np.float32)
    kernel[1, 1] += 1.0 + amount  # identity + amount * (identity - box): sums to 1
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip (colour order converted so that chroma is subsampled correctly)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------
# mask generator (MG)


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], variant: str,
              brow_lift: float = 0.5) -> np.ndarray:
    """Filled convex hull(s) of the landmarks as a float32 {0, 1} mask of ``shape`` (H, W).

    Variants: ``full`` (all points; with 81 points this includes the forehead), ``extended``
    (68 points plus the brows raised by ``brow_lift`` x the nose length, reaching the forehead),
    ``inner`` (brows, eyes, nose and mouth, without the jaw line) and ``components`` (separate
    hulls of each eye with its brow, and of nose plus mouth).
    """
    lm = landmarks
    if variant == "full":
        parts = [lm]
    elif variant == "extended":
        up = lm[27] - lm[30]  # from the nose tip to the bridge: "up" the face, nose-length long
        parts = [np.concatenate([lm[:68], lm[BROWS] + brow_lift * up])]
    elif variant == "inner":
        parts = [lm[17:68]]
    elif variant == "components":
        parts = [lm[np.r_[17:22, 36:42]], lm[np.r_[22:27, 42:48]], lm[np.r_[27:36, 48:68]]]
    else:
        raise ValueError(f"unknown hull variant {variant!r}; choose one of {HULLS}")
    mask = np.zeros(shape, np.uint8)
    for p in parts:  # 4 fractional bits: sub-pixel accurate polygon edges
        hull = cv2.convexHull(np.round(p * 16.0).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(np.float32)


def _elastic(mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    """Smooth random warp: Gaussian displacements on a coarse grid, bicubically upsampled."""
    h, w = mask.shape
    sigma = cfg.elastic_sigma * min(h, w) / 256.0
    g = cfg.elastic_grid
    disp = rng.normal(0.0, sigma, (2, g, g)).astype(np.float32)
    dx = cv2.resize(disp[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(disp[1], (w, h), interpolation=cv2.INTER_CUBIC)
    gx, gy = _grid(h, w)
    return cv2.remap(mask, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    if (h, w) not in _GRIDS:
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        _GRIDS[(h, w)] = (gx, gy)
    return _GRIDS[(h, w)]


def _odd(k: float) -> int:
    k = max(1, int(round(k)))
    return k if k % 2 else k + 1


def _soften(mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    """Two-stage blur: the first blur, thresholded at 1, erodes the mask by a random width;
    the second blurs the eroded mask, giving a random soft boundary. Peak normalised to 1."""
    scale = min(mask.shape) / 256.0
    k1 = _odd(rng.uniform(*cfg.blur_kernel) * scale)
    k2 = _odd(rng.uniform(*cfg.blur_kernel) * scale)
    first = cv2.GaussianBlur(mask, (k1, k1), 0)
    core = (first > 0.99).astype(np.float32)
    soft = cv2.GaussianBlur(core if core.any() else first, (k2, k2), 0)
    peak = float(soft.max())
    return soft / peak if peak > 0 else soft


# ---------------------------------------------------------------------------------------------
# the algorithm


def blend(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
          cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """One self-blended image of ``img`` (same size): returns (fake uint8, mask float32).

    STG then MG then ``fake = mask * source + (1 - mask) * target``. No crop or
    post-augmentation: :func:`sbi_pair` adds those, identically for the real image.
    """
    lm = check_face(img, landmarks)
    h, w = img.shape[:2]
    # STG: colour + frequency augmentation of one of the two copies
    augmented = _frequency(_apply_colour(img, _sample_colour(rng, cfg)), rng, cfg)
    source, target = (augmented, img) if rng.random() < cfg.p_augment_source else (img, augmented)
    # STG: resize + shift of the source around the face centre (landmark mismatch)
    centre = lm[:68].mean(axis=0)
    s = rng.uniform(*cfg.source_scale)
    shift = rng.uniform(-cfg.source_translate, cfg.source_translate, 2) * (w, h)
    affine = np.array([[s, 0, (1 - s) * centre[0] + shift[0]],
                       [0, s, (1 - s) * centre[1] + shift[1]]], np.float32)
    source = cv2.warpAffine(source, affine, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    # MG: hull variant, moved with the source, elastic warp, two-stage blur, blend ratio. It
    # runs at cfg.mask_scale of the image size: the blurred mask is smooth, so one bilinear
    # upsampling at the end loses nothing and saves most of the mask's cost.
    variant = cfg.hulls[rng.integers(len(cfg.hulls))]
    mh, mw = max(8, round(h * cfg.mask_scale)), max(8, round(w * cfg.mask_scale))
    k = np.array([mw / w, mh / h], np.float32)
    mask = hull_mask(lm * k, (mh, mw), variant, rng.uniform(*cfg.brow_lift))
    small = affine.copy()
    small[:, 2] *= k  # the same resize + shift in the mask's pixels
    mask = cv2.warpAffine(mask, small, (mw, mh), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    mask = _soften(_elastic(mask, rng, cfg), rng, cfg)
    if (mh, mw) != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        mask /= max(float(mask.max()), 1e-12)
    mask *= cfg.blend_ratios[rng.integers(len(cfg.blend_ratios))]
    fake = cv2.blendLinear(source, target, mask, 1.0 - mask)  # mask * source + (1 - mask) * target
    return fake, mask


def _crop(img: np.ndarray, lm: np.ndarray, margins: np.ndarray,
          size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop the landmark box grown by ``margins`` (left, right, top, bottom; fractions of the
    box), resized to ``size`` square; beyond the image is black, as in preprocessing."""
    affine = _crop_affine(lm, margins, size)
    out = cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    return out, (lm * affine[[0, 1], [0, 1]] + affine[:, 2]).astype(np.float32)


def _crop_affine(lm: np.ndarray, margins: np.ndarray, size: int) -> np.ndarray:
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    cx0, cx1 = x0 - margins[0] * bw, x1 + margins[1] * bw
    cy0, cy1 = y0 - margins[2] * bh, y1 + margins[3] * bh
    sx, sy = size / (cx1 - cx0), size / (cy1 - cy0)
    return np.array([[sx, 0, -cx0 * sx], [0, sy, -cy0 * sy]], np.float32)


def _top_extra(lm: np.ndarray, cfg: SBIConfig) -> float:
    return cfg.crop_top_extra if lm.shape[0] == 68 else 0.0  # 81 points reach the forehead


def random_crop(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """Crop the landmark box plus random margins per side, resized to ``cfg.size`` square."""
    lm = check_face(img, landmarks)
    margins = rng.uniform(*cfg.crop_margin, 4)
    margins[2] += _top_extra(lm, cfg)
    return _crop(img, lm, margins, cfg.size)


def _eval_margins(lm: np.ndarray, cfg: SBIConfig) -> np.ndarray:
    margins = np.full(4, sum(cfg.crop_margin) / 2)
    margins[2] += _top_extra(lm, cfg)
    return margins


def eval_crop(img: np.ndarray, landmarks: np.ndarray,
              cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic crop for evaluation: margins at the middle of the training range."""
    lm = check_face(img, landmarks)
    return _crop(img, lm, _eval_margins(lm, cfg), cfg.size)


def eval_crop_landmarks(landmarks: np.ndarray, cfg: SBIConfig = DEFAULT) -> np.ndarray:
    """Where :func:`eval_crop` moves the landmarks (no image needed)."""
    lm = np.asarray(landmarks, np.float32)
    affine = _crop_affine(lm, _eval_margins(lm, cfg), cfg.size)
    return (lm * affine[[0, 1], [0, 1]] + affine[:, 2]).astype(np.float32)


def hflip(img: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and landmarks; points are re-indexed so that 36 stays the right eye's corner."""
    out = np.ascontiguousarray(img[:, ::-1])
    lm = landmarks.copy()
    lm[:, 0] = img.shape[1] - landmarks[:, 0]
    lm[:68] = lm[MIRROR_68]
    return out, lm


def _post(images: list[np.ndarray], rng: np.random.Generator,
          cfg: SBIConfig) -> list[np.ndarray]:
    """The same colour jitter and JPEG quality for every image of ``images``."""
    if rng.random() < cfg.p_post_colour:
        colour = _sample_colour(rng, cfg)
        images = [_apply_colour(im, colour) for im in images]
    if rng.random() < cfg.p_jpeg:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        images = [_jpeg(im, quality) for im in images]
    return images


def augment(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
            cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """SBI's training augmentation without the blend: random crop, flip, colour, JPEG.

    For frames that enter training beside SBI pairs (original fakes of stream 1), so that
    every training image sees the same augmentation distribution.
    """
    img, lm = random_crop(img, landmarks, rng, cfg)
    if rng.random() < cfg.p_flip:
        img, lm = hflip(img, lm)
    return _post([img], rng, cfg)[0], lm


def sbi_pair(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
             cfg: SBIConfig = DEFAULT) -> SBISample:
    """The full SBI training pair: crop with random margins, flip, blend, shared post-aug.

    ``real`` and ``fake`` share the crop, the flip, the colour jitter and the JPEG quality, so
    that the blending artefacts are the only difference between them.
    """
    img, lm = random_crop(img, landmarks, rng, cfg)
    if rng.random() < cfg.p_flip:
        img, lm = hflip(img, lm)
    fake, mask = blend(img, lm, rng, cfg)
    real, fake = _post([img, fake], rng, cfg)
    return SBISample(real, fake, mask, lm)


def sbi(img: np.ndarray, landmarks: np.ndarray,
        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend-registry entry (same signature as the simple self-blend): (fake, mask) of ``img``.

    Only the blending (STG + MG); the caller augments real and fake alike. Use
    :func:`sbi_pair` for the paper's full pipeline with the shared crop and post-augmentation.
    """
    return blend(img, landmarks, rng, DEFAULT)


# On real data the training pipeline (csdfd.data.stream) uses the full pair and the matching
# augmentation of unblended frames through these attributes of the registry entry.
sbi.pair = sbi_pair  # type: ignore[attr-defined]
sbi.augment = augment  # type: ignore[attr-defined]
