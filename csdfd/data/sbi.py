"""Self-Blended Images (SBI): Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended
Images", CVPR 2022, section 3, as their code does it (mapooon/SelfBlendedImages). Stream 2 of
CS-DFD (METHOD.md section 1) trains on these pairs.

A pseudo-fake is made from one real face and its landmarks, without an identity change, so a
detector trained on it learns the generic traces of face forgeries (blending boundary, colour
and frequency mismatch, landmark mismatch). One training pair (:func:`sbi_pair`):

1. Flip the face with p = 0.5.
2. Blend frame: the 68-point landmark box widened by half its width on each side, its height
   above and 0.4 of it below (SBI's first crop), clipped to the image.
3. Mask generator: one of four hulls, uniformly (:data:`HULLS`); with 81-point landmarks the
   forehead points are kept 75 % of the time (only ``facehull`` uses them).
4. Source-target generator: one of two copies, the source or the target with p = 0.5 each,
   gets RGB shift +-20 (p = 0.3), HSV shift +-0.3 (uint8 units, truncated as albumentations
   does: at most one level), brightness and contrast +-0.1, then either
   nearest downscaling by 2 or 4 and linear upscaling, or Sharpen (alpha 0.2-0.5, lightness
   0.5-1). The source is then scaled by 0.95-1/0.95 (x and y apart) and shifted by up to
   3 % / 1.5 % of the frame's width / height; the mask moves with it and is warped
   elastically (alpha 50, sigma 7 pixels).
5. Mask blur: resized to a random 192-256 size (w and h apart), Gaussian of an odd kernel
   5-25 of which only the maximum is kept, Gaussian of an odd kernel 5-25 with sigma 5-45,
   peak 1, resized back, scaled by a blend ratio from (0.25, 0.5, 0.75, 1, 1, 1).
6. ``fake = mask * source + (1 - mask) * target``; **the real is the target**, augmented or
   not: outside the mask, real and fake are the same image.
7. Shared post-augmentation (same draw for both): RGB shift +-20, HSV shift +-0.3, brightness
   and contrast +-0.3, each with p = 0.3; JPEG quality 40-100 with p = 0.5.
8. Final crop: the face box with random margins of 5-20 % of its size per side.

Deviations from the published code, and why:

- **Input size** ``size`` (default 256, the paper's crops; SBI trains at 380). The trainer
  passes ``--img-size``; 380 reproduces SBI's.
- **Final crop box**: SBI widens RetinaFace's box; we have no RetinaFace boxes and widen the
  landmark box by the same 5-20 %, plus 10 % of its height above for 68 points, whose box stops
  at the brows (81 points reach the forehead themselves).
- **Resolution**: SBI blends at the video's resolution and resizes the final crop to 380. We
  resample the blend frame once so that the final crop is exactly ``size`` pixels and blend
  there: the pixel-level steps (3 x 3 sharpening, the 2 / 4 downscaling, the elastic warp's
  7-pixel sigma, 8 x 8 JPEG blocks) act at the detector's resolution. One resampling fewer.
- **Clipped blend frame**: stored crops (``csdfd.preprocess``, DeepfakeBench) are tighter than
  SBI's first crop. Like SBI we clip the frame to the image, but we size the mask blur from the
  unclipped box, as in SBI's usual case of a face far from the frame's edges.
- **Rounding**: SBI truncates the blended float image to uint8, darkening the blended band by
  half a grey level on average, a cue no real forgery has; we round.
- **JPEG channel order**: albumentations encodes SBI's RGB arrays as if they were BGR, so
  chroma is computed from swapped channels; we encode in the right order.
- **Sub-pixel hulls**: Face X-ray truncates landmarks to whole pixels before drawing; we draw
  with 1/16-pixel precision (no effect after the mask blur).
- **Only what reaches the crop is computed** (:func:`_blend`, :func:`_post`): same pixels,
  except that the nearest grid of the 2 / 4 downscaling starts at the corner of the box being
  augmented rather than of the frame (a phase that is random in SBI too).
- **Elastic field** drawn on a 3x coarser grid and upsampled, with the variance and correlation
  length of albumentations' (:func:`csdfd.data.sbi_parts.elastic_field`, tested against scipy).
- **Errors**: SBI's dataset catches any failure and draws another frame; we raise, naming the
  input.
- **Registry entry** :func:`sbi` (``--blend sbi`` on in-memory data and the validation fakes):
  the registry pairs a fake with its input, so that entry always augments the source; the
  training batches use both branches (``sbi.with_real``, ``sbi.pair``).

Every random choice comes from one ``numpy.random.Generator`` (SBI mixes Python's and NumPy's
global generators), so a sample is a function of the seed. All work is whole-image OpenCV /
numpy operations; throughput: ``pytest bench/bench_sbi.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import cv2
import numpy as np

from . import sbi_geometry as G
from .sbi_geometry import FOREHEAD_ORDER, MIRROR_68, MIRROR_81, hflip
from .sbi_parts import (
    HULLS,
    ColourSpec,
    apply_colour,
    apply_frequency,
    elastic,
    hull_mask,
    jpeg,
    sample_blur,
    sample_colour,
    sample_frequency,
    soften,
)

__all__ = ["HULLS", "hull_mask", "SBIConfig", "DEFAULT", "SBISample", "sbi_pair", "augment",
           "blend", "sbi", "hflip", "random_crop", "eval_crop", "eval_crop_landmarks",
           "FOREHEAD_ORDER", "MIRROR_68", "MIRROR_81"]


@dataclass(frozen=True)
class SBIConfig:
    """Every number of the recipe; the defaults are SBI's published ones (module docstring)."""

    size: int = 256  # output side (SBI: 380; the paper's crops and csdfd's default: 256)
    p_flip: float = 0.5
    # SBI's first crop around the 68-point box: left, right, top, bottom (fractions of the box)
    frame_margin: tuple[float, float, float, float] = (0.5, 0.5, 1.0, 0.4)
    # final crop: margin per side, fraction of the box (SBI: box / 4 x U(0.2, 0.8))
    crop_margin: tuple[float, float] = (0.05, 0.20)
    crop_top_extra: float = 0.1  # 68 points stop at the brows: keep some forehead above them
    # mask generator
    hulls: tuple[str, ...] = HULLS
    p_forehead: float = 0.75  # with 81 points: keep the 13 forehead points this often
    # source-target generator: which copy is augmented, colour, frequency, geometry
    p_augment_source: float = 0.5
    stg_colour: ColourSpec = ColourSpec(p_rgb=0.3, rgb=20.0, p_hsv=1.0, hsv=0.3, p_bc=1.0,
                                        brightness=0.1, contrast=0.1)
    downscale: tuple[int, ...] = (2, 4)
    sharpen_alpha: tuple[float, float] = (0.2, 0.5)
    sharpen_lightness: tuple[float, float] = (0.5, 1.0)
    source_scale: tuple[float, float] = (0.95, 1 / 0.95)  # x and y drawn apart
    source_translate: tuple[float, float] = (0.03, 0.015)  # x, y: fractions of the frame
    elastic_alpha: float = 50.0
    elastic_sigma: float = 7.0  # pixels
    # mask blur and blend ratio
    blur_size: tuple[int, int] = (192, 256)  # the blend frame is resized to this, per side
    blur_kernel: tuple[int, int] = (5, 25)  # odd kernel sides
    blur_sigma: tuple[int, int] = (5, 45)  # second blur's sigma (an integer)
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    # post-augmentation shared by real and fake
    post_colour: ColourSpec = ColourSpec(p_rgb=0.3, rgb=20.0, p_hsv=0.3, hsv=0.3, p_bc=0.3,
                                         brightness=0.3, contrast=0.3)
    p_jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 100)

    def __post_init__(self) -> None:
        bad = [h for h in self.hulls if h not in HULLS]
        if bad or not self.hulls:
            raise ValueError(f"hulls must be a non-empty subset of {HULLS}, but got {self.hulls}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16, but got {self.size}")
        k0, k1 = self.blur_kernel
        if k0 < 1 or k0 % 2 == 0 or k1 < k0:
            raise ValueError(f"blur_kernel must be (odd, >= it), but got {self.blur_kernel}")


DEFAULT = SBIConfig()


class SBISample(NamedTuple):
    """A training pair: the same crop and post-augmentation of the real and its self-blend."""

    real: np.ndarray  # [size, size, 3] uint8 RGB: the image the fake was blended into
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
# the blend (steps 3-6 of the module docstring)


class Blended(NamedTuple):
    real: np.ndarray  # the target: the image the fake was blended into
    fake: np.ndarray
    mask: np.ndarray


def _source_affine(w: int, h: int, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    """albumentations' Affine as SBI calls it: scale about the image centre, then shift."""
    sx, sy = rng.uniform(*cfg.source_scale, 2)
    tx = rng.uniform(-cfg.source_translate[0], cfg.source_translate[0]) * w
    ty = rng.uniform(-cfg.source_translate[1], cfg.source_translate[1]) * h
    cx, cy = w / 2 - 0.5, h / 2 - 0.5
    return np.array([[sx, 0, cx - sx * cx + tx], [0, sy, cy - sy * cy + ty]], np.float32)


def _mask(lm: np.ndarray, shape: tuple[int, int], box: tuple[float, float],
          rng: np.random.Generator, cfg: SBIConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mask generator on a frame of ``shape``: (blend mask, the source's affine map).

    ``box`` is (w, h) of SBI's first crop in frame pixels: it sets the scale of the blur.
    """
    h, w = shape
    if lm.shape[0] == 81 and rng.random() >= cfg.p_forehead:
        lm = lm[:68]
    variant = cfg.hulls[rng.integers(len(cfg.hulls))]
    affine = _source_affine(w, h, rng, cfg)
    # the hull moves with the source: drawn from the moved landmarks (an affine map moves a
    # convex hull onto the hull of the moved points), which SBI gets by warping the mask
    mask = hull_mask(G.move(lm, affine), (h, w), variant)
    mask = elastic(mask, rng, cfg.elastic_alpha, cfg.elastic_sigma)
    b = sample_blur(rng, cfg.blur_size, cfg.blur_kernel, cfg.blur_sigma)
    # SBI resizes its first crop to b.size; ours may be clipped: keep the box's scale
    side = (max(8, round(b.size[0] * w / box[0])), max(8, round(b.size[1] * h / box[1])))
    mask = soften(mask, b._replace(size=side))
    mask *= cfg.blend_ratios[rng.integers(len(cfg.blend_ratios))]
    return mask, affine


def _blend(read: G.Reader, shape: tuple[int, int], lm: np.ndarray, box: tuple[float, float],
           out: G.Box, rng: np.random.Generator, cfg: SBIConfig) -> Blended:
    """SBI's self_blending on a frame of ``shape`` whose pixels ``read`` gives; real, fake and
    mask come back for the box ``out`` of it.

    Only the pixels that reach ``out`` are computed: the fake differs from the target only
    inside the mask, so the source is warped and blended only over the mask's bounding box,
    from the box it comes from (grown by 8 pixels, beyond the reach of the 3 x 3 sharpening
    and of the linear upsampling after a 4x downscale).
    """
    mask, affine = _mask(lm, shape, box, rng, cfg)
    colour = sample_colour(rng, cfg.stg_colour)
    freq = sample_frequency(rng, cfg.downscale, cfg.sharpen_alpha, cfg.sharpen_lightness)
    augment_source = rng.random() < cfg.p_augment_source

    def copy(b: G.Box, augmented: bool) -> np.ndarray:
        return apply_frequency(apply_colour(read(b), colour), freq) if augmented else read(b)

    ox0, oy0, ox1, oy1 = out
    m = np.ascontiguousarray(mask[oy0:oy1, ox0:ox1])
    target = copy(out, not augment_source)
    fake = target.copy()
    x, y, bw, bh = cv2.boundingRect((m > 0).astype(np.uint8))
    if bw and bh:
        inner = (ox0 + x, oy0 + y, ox0 + x + bw, oy0 + y + bh)
        pre = G.preimage(affine, inner, 8, shape)
        local = affine.copy()  # pixels of `pre` -> pixels of `inner`
        local[:, 2] += affine[:, :2] @ np.float32(pre[:2]) - np.float32(inner[:2])
        source = cv2.warpAffine(copy(pre, augment_source), local, (bw, bh),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        mm = m[y:y + bh, x:x + bw]
        # mask * source + (1 - mask) * target, rounded (SBI truncates)
        fake[y:y + bh, x:x + bw] = cv2.blendLinear(source, target[y:y + bh, x:x + bw], mm,
                                                   1.0 - mm)
    return Blended(target, fake, m)


def blend(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
          cfg: SBIConfig = DEFAULT) -> Blended:
    """One self-blend of the whole ``img`` (no crop, no post-augmentation): (real, fake, mask).

    ``real`` is the target the source was blended into: ``img`` itself, or its augmented copy
    when the source-target generator augments the target (p = 1 - ``p_augment_source``).
    """
    lm = check_face(img, landmarks)
    x0, y0, x1, y1 = G.crop_box(lm[:68], np.asarray(cfg.frame_margin))
    h, w = img.shape[:2]
    return _blend(lambda b: img[b[1]:b[3], b[0]:b[2]], (h, w), lm, (x1 - x0, y1 - y0),
                  (0, 0, w, h), rng, cfg)


# ---------------------------------------------------------------------------------------------
# the final crop alone (evaluation takes the middle of its margins)


def _margins(lm: np.ndarray, rng: np.random.Generator | None, cfg: SBIConfig) -> np.ndarray:
    """Final-crop margins (left, right, top, bottom); the middle of the range without ``rng``."""
    if rng is None:
        margins = np.full(4, sum(cfg.crop_margin) / 2)
    else:
        margins = rng.uniform(*cfg.crop_margin, 4)
    margins[2] += cfg.crop_top_extra if lm.shape[0] == 68 else 0.0  # 81 reach the forehead
    return margins


def random_crop(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """The final crop alone: landmark box plus random margins per side, ``cfg.size`` square."""
    lm = check_face(img, landmarks)
    return _crop(img, lm, _margins(lm, rng, cfg), cfg.size)


def _crop(img: np.ndarray, lm: np.ndarray, margins: np.ndarray,
          size: int) -> tuple[np.ndarray, np.ndarray]:
    affine = G.crop_affine(lm, margins, size)
    out = cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    return out, G.move(lm, affine)


def eval_crop(img: np.ndarray, landmarks: np.ndarray,
              cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic crop for evaluation: margins at the middle of the training range
    (SBI's test crop: box / 8 per side)."""
    lm = check_face(img, landmarks)
    return _crop(img, lm, _margins(lm, None, cfg), cfg.size)


def eval_crop_landmarks(landmarks: np.ndarray, cfg: SBIConfig = DEFAULT) -> np.ndarray:
    """Where :func:`eval_crop` moves the landmarks (no image needed)."""
    lm = np.asarray(landmarks, np.float32)
    return G.move(lm, G.crop_affine(lm, _margins(lm, None, cfg), cfg.size))


# ---------------------------------------------------------------------------------------------
# the training pair and the matching augmentation of unblended frames


def _post(images: list[np.ndarray], f: G.Frame, rng: np.random.Generator,
          cfg: SBIConfig) -> list[np.ndarray]:
    """The same colour jitter and JPEG for each of ``images`` (the frame's ``f.region``), then
    the final crop.

    JPEG of the region gives the crop exactly what JPEG of the whole frame would (the region
    follows the frame's block grid and reaches a block beyond the crop); colour is per pixel.
    """
    colour = sample_colour(rng, cfg.post_colour)
    quality = None
    if rng.random() < cfg.p_jpeg:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    x, y, s = f.offset[0] - f.region[0], f.offset[1] - f.region[1], cfg.size
    out = []
    for im in images:
        if quality is None:  # only the crop is needed
            out.append(apply_colour(np.ascontiguousarray(im[y:y + s, x:x + s]), colour))
        else:
            out.append(np.ascontiguousarray(jpeg(apply_colour(im, colour), quality)
                                            [y:y + s, x:x + s]))
    return out


def _start(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
           cfg: SBIConfig) -> tuple[G.Frame, np.ndarray, G.Reader]:
    """Steps 1, 2 and 8's crop draw: flip, the frame and the landmarks in it, its reader."""
    lm = check_face(img, landmarks)
    if rng.random() < cfg.p_flip:
        img, lm = G.hflip(img, lm)
    f = G.frame(lm, img.shape, _margins(lm, rng, cfg), cfg.frame_margin, cfg.size)
    return f, G.move(lm, f.affine), G.reader(img, f)


def sbi_pair(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
             cfg: SBIConfig = DEFAULT) -> SBISample:
    """The full SBI training pair (steps 1-8 of the module docstring) from a face image and its
    68 or 81 landmarks. ``real`` is the image the fake was blended into, with the same crop,
    colour jitter and JPEG: outside the mask they are the same pixels."""
    f, flm, read = _start(img, landmarks, rng, cfg)
    pair = _blend(read, f.shape, flm, f.box, f.region, rng, cfg)
    real, fake = _post([pair.real, pair.fake], f, rng, cfg)
    x, y, s = f.offset[0] - f.region[0], f.offset[1] - f.region[1], cfg.size
    mask = np.ascontiguousarray(pair.mask[y:y + s, x:x + s])
    return SBISample(real, fake, mask, (flm - f.offset).astype(np.float32))


def augment(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
            cfg: SBIConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """SBI's training augmentation without the blend: flip, crop, colour, JPEG, with the same
    distributions as :func:`sbi_pair` (JPEG block grid included).

    For frames that enter training beside SBI pairs (original fakes of stream 1), so that no
    stream can be told apart by its augmentation.
    """
    f, flm, read = _start(img, landmarks, rng, cfg)
    return _post([read(f.region)], f, rng, cfg)[0], (flm - f.offset).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the blend registry entry (csdfd.data.BLENDS)

_SOURCE_ONLY = replace(DEFAULT, p_augment_source=1.0)


def sbi(img: np.ndarray, landmarks: np.ndarray,
        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend-registry entry: (fake, mask) of the whole ``img``, whose real is ``img``.

    The registry's contract pairs the fake with its input, so this entry always augments the
    source (SBI's first branch). The training pipeline (:mod:`csdfd.data.stream`) uses
    ``sbi.with_real`` (both branches, returning the real) or ``sbi.pair`` (the full pair).
    """
    out = blend(img, landmarks, rng, _SOURCE_ONLY)
    return out.fake, out.mask


def _with_real(img: np.ndarray, landmarks: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(blend(img, landmarks, rng))  # type: ignore[return-value]


sbi.with_real = _with_real  # type: ignore[attr-defined]
sbi.pair = sbi_pair  # type: ignore[attr-defined]
sbi.augment = augment  # type: ignore[attr-defined]
sbi.config = SBIConfig  # type: ignore[attr-defined]
