"""Procedural face renderer with 68-point landmarks, for the embedded synthetic benchmark.

A face is an identity (shape, skin tone, skin texture, hair, eye and lip colour: fixed per person)
seen in a frame (pose, expression, lighting, background, camera: drawn per image). Landmarks
follow the iBUG 68-point layout used by dlib (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
mouth 48-67), placed on a 3-D template, rotated by the head pose and projected orthographically,
so the self-blending of stream 2 and the forgeries of :mod:`csdfd.data.forgeries` see the same
kind of input as with real dlib landmarks.

Drawing is OpenCV polygons at twice the output size (anti-aliased, then area-downsampled);
shading, skin texture and backgrounds are whole-image numpy expressions: one 64 x 64 face takes
well under a millisecond. Images are float32 RGB in [0, 255] until :func:`finish` applies the
camera (noise, JPEG) and returns uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

SKIN_LIGHT = np.array([236.0, 204.0, 180.0])
SKIN_DARK = np.array([92.0, 60.0, 42.0])
HAIR = np.array([[25, 20, 18], [70, 45, 30], [120, 85, 50], [200, 165, 100], [150, 60, 30],
                 [170, 170, 170]], np.float32)
IRIS = np.array([[60, 40, 25], [90, 120, 160], [80, 110, 70], [40, 30, 20]], np.float32)
_SS = 2  # supersampling factor of the drawing
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel polygon vertices


@dataclass(frozen=True)
class Identity:
    """What stays the same across one person's frames (units: face half-width = 1)."""

    skin: np.ndarray  # RGB
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    width: float  # face half-width relative to the template
    height: float  # chin distance
    taper: float  # how much the jaw narrows towards the chin
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    brow_y: float
    brow_arch: float
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: float  # lip thickness
    hair_len: float  # how far down the sides the hair reaches
    texture: np.ndarray  # [4, 4]: amplitude, fu, fv, phase of skin-texture sinusoids
    moles: np.ndarray  # [m, 2] (u, v) positions of dark spots


@dataclass(frozen=True)
class Frame:
    """What changes per image: pose, expression, light, background, camera."""

    yaw: float  # radians
    pitch: float
    roll: float
    scale: float  # face half-width as a fraction of the image side
    cx: float  # face centre as a fraction of the image side
    cy: float
    mouth_open: float
    smile: float
    blink: float  # 1 = open eyes, 0 = closed
    gaze: float
    light: np.ndarray  # direction (x, y, z), normalised
    ambient: float
    diffuse: float
    tint: np.ndarray  # RGB gain of the light colour
    bg: np.ndarray  # [2, 3] background gradient colours
    bg_angle: float
    bg_seed: int
    shirt: np.ndarray
    noise: float  # sensor noise sigma (grey levels)
    quality: int  # JPEG quality


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random person; skin tone spans light to dark uniformly."""
    t = rng.uniform()
    skin = SKIN_LIGHT * (1 - t) + SKIN_DARK * t + rng.normal(0, 6, 3)
    texture = np.stack([rng.uniform(2, 7, 4), rng.uniform(-6, 6, 4), rng.uniform(-6, 6, 4),
                        rng.uniform(0, 2 * np.pi, 4)], 1)
    return Identity(
        skin=np.clip(skin, 30, 250), hair=HAIR[rng.integers(len(HAIR))] + rng.normal(0, 8, 3),
        iris=IRIS[rng.integers(len(IRIS))] + rng.normal(0, 8, 3),
        lips=np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 6, 3), 20, 255),
        width=rng.uniform(0.85, 1.0), height=rng.uniform(1.05, 1.3), taper=rng.uniform(0.1, 0.4),
        eye_dx=rng.uniform(0.32, 0.42), eye_y=rng.uniform(-0.3, -0.18),
        eye_w=rng.uniform(0.13, 0.19), eye_h=rng.uniform(0.05, 0.08),
        brow_y=rng.uniform(-0.5, -0.4), brow_arch=rng.uniform(0.02, 0.1),
        brow_thick=rng.uniform(0.03, 0.07), nose_len=rng.uniform(0.3, 0.45),
        nose_w=rng.uniform(0.12, 0.2), mouth_y=rng.uniform(0.5, 0.65),
        mouth_w=rng.uniform(0.22, 0.32), lip=rng.uniform(0.04, 0.08),
        hair_len=rng.uniform(-0.2, 0.9), texture=texture, moles=rng.uniform(-0.6, 0.6, (3, 2)),
    )


def sample_frame(rng: np.random.Generator, quality: tuple[int, int] = (70, 95),
                 light: float = 0.5) -> Frame:
    """Random pose, expression, light and camera; ``quality`` is the JPEG quality range and
    ``light`` the strength of directional light (0: flat ambient)."""
    az = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(az) * 0.8, np.sin(az) * 0.8, 1.0])
    return Frame(
        yaw=rng.uniform(-0.6, 0.6), pitch=rng.uniform(-0.25, 0.25), roll=rng.uniform(-0.25, 0.25),
        scale=rng.uniform(0.25, 0.32), cx=0.5 + rng.uniform(-0.04, 0.04),
        cy=0.47 + rng.uniform(-0.04, 0.04),
        mouth_open=max(0.0, rng.normal(0.02, 0.05)), smile=rng.uniform(-0.04, 0.06),
        blink=1.0 if rng.uniform() > 0.1 else rng.uniform(0.1, 0.5),
        gaze=rng.uniform(-0.3, 0.3), light=direction / np.linalg.norm(direction),
        ambient=rng.uniform(0.55, 0.85), diffuse=rng.uniform(0.1, light) if light > 0.1 else 0.0,
        tint=1 + rng.uniform(-0.08, 0.08, 3), bg=rng.uniform(20, 235, (2, 3)),
        bg_angle=rng.uniform(0, 2 * np.pi), bg_seed=int(rng.integers(2**31)),
        shirt=rng.uniform(20, 235, 3), noise=rng.uniform(0.5, 4.0),
        quality=int(rng.integers(quality[0], quality[1] + 1)),
    )


def _template(idn: Identity, fr: Frame) -> np.ndarray:
    """[68, 3] landmark template (x right, y down, z towards the camera) before the pose."""
    t = np.linspace(0, np.pi, 17)
    s = np.sin(t)
    jaw = np.stack([-np.cos(t) * (1 - idn.taper * s**2), -0.15 + (idn.height + 0.15) * s,
                    0.45 * s**2], 1)
    jaw[:, 0] *= idn.width
    b = np.linspace(0, 1, 5)
    brow_x = -0.75 + 0.6 * b
    brow_y = idn.brow_y - idn.brow_arch * np.sin(np.pi * b)
    brows = np.concatenate([np.stack([brow_x, brow_y, np.full(5, 0.55)], 1),
                            np.stack([-brow_x[::-1], brow_y[::-1], np.full(5, 0.55)], 1)])
    bridge = np.stack([np.zeros(4), np.linspace(-0.22, -0.22 + idn.nose_len, 4),
                       np.linspace(0.6, 0.95, 4)], 1)
    nb = np.array([-1, -0.5, 0, 0.5, 1])
    base = np.stack([nb * idn.nose_w, -0.17 + idn.nose_len + np.array([0, 0.03, 0.05, 0.03, 0]),
                     0.8 - 0.1 * np.abs(nb)], 1)
    eh = idn.eye_h * fr.blink
    ex = np.array([-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3]) * idn.eye_w
    ey = np.array([0, -1, -1, 0, 1, 1]) * eh
    eyes = [np.stack([cx + ex, idn.eye_y + ey, np.full(6, 0.45)], 1)
            for cx in (-idn.eye_dx, idn.eye_dx)]
    mw, my, op, lip = idn.mouth_w, idn.mouth_y, fr.mouth_open, idn.lip
    ox = np.array([-1, -0.6, -0.25, 0, 0.25, 0.6, 1, 0.6, 0.25, 0, -0.25, -0.6]) * mw
    oy = np.array([-fr.smile, -lip - op / 2, -1.1 * lip - op / 2, -0.9 * lip - op / 2,
                   -1.1 * lip - op / 2, -lip - op / 2, -fr.smile, lip + op / 2,
                   1.1 * lip + op / 2, 1.15 * lip + op / 2, 1.1 * lip + op / 2, lip + op / 2])
    ix = np.array([-0.85, -0.35, 0, 0.35, 0.85, 0.35, 0, -0.35]) * mw
    iy = np.array([-fr.smile, -op / 2, -op / 2, -op / 2, -fr.smile, op / 2, op / 2, op / 2])
    mouth = np.stack([np.concatenate([ox, ix]), my + np.concatenate([oy, iy]), np.full(20, 0.6)], 1)
    return np.concatenate([jaw, brows, bridge, base, *eyes, mouth]).astype(np.float64)


def _rotation(fr: Frame) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (np.cos(fr.yaw), np.sin(fr.yaw), np.cos(fr.pitch),
                              np.sin(fr.pitch), np.cos(fr.roll), np.sin(fr.roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def project(points: np.ndarray, fr: Frame, size: int) -> np.ndarray:
    """Template points [n, 3] -> pixel coordinates [n, 2] in a ``size`` image."""
    p = points @ _rotation(fr).T
    return (p[:, :2] * fr.scale + (fr.cx, fr.cy)) * size


def landmarks(idn: Identity, fr: Frame, size: int) -> np.ndarray:
    """The 68 landmarks [68, 2] (x, y pixels) of this face in a ``size`` x ``size`` image."""
    return project(_template(idn, fr), fr, size).astype(np.float32)


def _outline(idn: Identity, fr: Frame, grow: float = 1.0, hair_len: float | None = None):
    """Projected head outline (jaw + forehead arc): face polygon, or hair polygon if grown."""
    t = np.linspace(0, np.pi, 24)
    jaw = _template(idn, fr)[:17]
    top = np.stack([np.cos(t) * idn.width * 0.98, -0.15 - 0.95 * np.sin(t), 0.2 * np.sin(t)], 1)
    if hair_len is None:
        return np.concatenate([jaw, top])
    side = np.linspace(-0.15, hair_len, 6)
    right = np.stack([np.full(6, idn.width * grow), side[::-1], np.zeros(6)], 1)
    left = np.stack([np.full(6, -idn.width * grow), side, np.zeros(6)], 1)
    arc = top * np.array([grow, 1.0, 1.0]) + np.array([0, -0.08 * grow, 0])
    return np.concatenate([right, arc, left])


def _poly(img: np.ndarray, pts: np.ndarray, colour, size: int) -> None:
    cv2.fillPoly(img, [np.round(pts * (1 << _SHIFT)).astype(np.int32)], tuple(map(float, colour)),
                 cv2.LINE_AA, _SHIFT)


def _background(fr: Frame, size: int) -> np.ndarray:
    """Linear colour gradient plus a few blurred discs, drawn at the output size (it is blurred
    anyway) and upsampled to the drawing size."""
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    w = (np.cos(fr.bg_angle) * ramp[None, :] + np.sin(fr.bg_angle) * ramp[:, None] + 0.5)
    w = w.clip(0, 1)[..., None]
    img = fr.bg[0].astype(np.float32) * (1 - w) + fr.bg[1].astype(np.float32) * w
    rng = np.random.default_rng(fr.bg_seed)
    for _ in range(3):
        c = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.25) * size
        cv2.circle(img, (int(c[0]), int(c[1])), int(r), tuple(rng.uniform(20, 235, 3)), -1)
    img = cv2.GaussianBlur(img, (0, 0), size / 40)
    return cv2.resize(img, (size * _SS, size * _SS), interpolation=cv2.INTER_LINEAR)


def _shade(idn: Identity, fr: Frame, n: int) -> np.ndarray:
    """Lambertian shading of an ellipsoidal head plus the identity's skin texture, [n, n]
    (smooth, so it is computed at the output size and applied after downsampling)."""
    x = np.arange(n, dtype=np.float32)[None, :] + 0.5
    y = np.arange(n, dtype=np.float32)[:, None] + 0.5
    cx, cy = fr.cx * n, (fr.cy + 0.3 * fr.scale) * n
    c, s = np.cos(-fr.roll), np.sin(-fr.roll)
    dx, dy = x - cx, y - cy
    u = (c * dx - s * dy) / (fr.scale * n * idn.width * 1.05)
    v = (s * dx + c * dy) / (fr.scale * n * 1.3)
    nz = np.sqrt(np.clip(1 - u**2 - v**2, 0.05, 1))
    light = fr.light @ _rotation(replace(fr, roll=0.0)).T
    lam = np.clip(u * light[0] + v * light[1] + nz * light[2], 0, 1)
    amp, fu, fv, ph = idn.texture.T
    tex = (amp[:, None, None] * np.sin(fu[:, None, None] * u + fv[:, None, None] * v
                                        + ph[:, None, None])).sum(0)
    return (fr.ambient + fr.diffuse * lam + tex / 255 * 3).astype(np.float32)


def render(idn: Identity, fr: Frame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one face: (float32 RGB image [size, size, 3] in [0, 255], landmarks [68, 2])."""
    n = size * _SS
    lm = project(_template(idn, fr), fr, n)
    img = _background(fr, size)
    _poly(img, np.array([[0.2, 1.0], [0.8, 1.0], [0.8, 0.92], [0.2, 0.92]]) * n
          + (fr.cx - 0.5) * n * np.array([1, 0]), fr.shirt, n)
    neck = np.concatenate([lm[[5, 11]], lm[[11, 5]] + [0, n]])
    neck[2:, 0] += [0.06 * n, -0.06 * n]
    _poly(img, neck, idn.skin * 0.75, n)
    _poly(img, project(_outline(idn, fr, 1.12, idn.hair_len), fr, n), idn.hair, n)
    face = np.zeros((n, n), np.float32)
    _poly(face, project(_outline(idn, fr), fr, n), (1.0,), n)
    skin = np.broadcast_to(idn.skin.astype(np.float32), img.shape)
    img = img * (1 - face[..., None]) + skin * face[..., None]
    for u, v in idn.moles:
        p = project(np.array([[u * idn.width, v, 0.5]]), fr, n)[0]
        cv2.circle(img, (int(p[0]), int(p[1])), max(1, n // 90), tuple(idn.skin * 0.6), -1,
                   cv2.LINE_AA)
    _features(img, lm, idn, fr, n)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img *= _shade(idn, fr, size)[..., None] * fr.tint.astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32), (lm / _SS).astype(np.float32)


def _features(img: np.ndarray, lm: np.ndarray, idn: Identity, fr: Frame, n: int) -> None:
    """Brows, eyes, nose and mouth, in place."""
    th = max(1, int(idn.brow_thick * fr.scale * n))
    for a, b in ((17, 22), (22, 27)):
        cv2.polylines(img, [np.round(lm[a:b] * 16).astype(np.int32)], False,
                      tuple(map(float, idn.hair * 0.9)), th, cv2.LINE_AA, 4)
    for a in (36, 42):
        eye = lm[a : a + 6]
        _poly(img, eye, (235, 232, 225), n)
        centre = eye.mean(0) + [fr.gaze * (eye[3, 0] - eye[0, 0]) * 0.25, 0]
        r = max(1.0, (eye[3, 0] - eye[0, 0]) * 0.22)
        if fr.blink > 0.6:
            cv2.circle(img, (int(centre[0]), int(centre[1])), int(r), tuple(map(float, idn.iris)),
                       -1, cv2.LINE_AA)
            cv2.circle(img, (int(centre[0]), int(centre[1])), max(1, int(r * 0.45)), (10, 10, 10),
                       -1, cv2.LINE_AA)
        cv2.polylines(img, [np.round(eye * 16).astype(np.int32)], True, (40, 30, 30),
                      max(1, n // 100), cv2.LINE_AA, 4)
    cv2.polylines(img, [np.round(lm[27:31] * 16).astype(np.int32)], False,
                  tuple(map(float, idn.skin * 0.8)), max(1, n // 80), cv2.LINE_AA, 4)
    for k in (32, 34):
        cv2.circle(img, (int(lm[k, 0]), int(lm[k, 1])), max(1, n // 70),
                   tuple(map(float, idn.skin * 0.45)), -1, cv2.LINE_AA)
    _poly(img, lm[48:60], idn.lips, n)
    if fr.mouth_open > 0.02:
        _poly(img, lm[60:68], (55, 20, 25), n)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of an RGB uint8 image (the compression artefacts of a video frame)."""
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode a synthetic frame")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def finish(img: np.ndarray, fr: Frame, rng: np.random.Generator) -> np.ndarray:
    """The camera: sensor noise, quantisation to uint8 and JPEG at the frame's quality."""
    noisy = img + rng.normal(0, fr.noise, img.shape).astype(np.float32)
    return jpeg(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), fr.quality)
