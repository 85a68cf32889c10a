"""SBI (Shiohara and Yamasaki, CVPR 2022) on real photographs: csdfd/data/sbi.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from realfaces import face_crop

from csdfd.data import sbi as S

FACES = ["astronaut", "grace_hopper"]
# no STG difference between source and target: the blend must give back the image
NEUTRAL = S.SBIConfig(rgb_shift=0, hue_shift=0, sat_shift=0, val_shift=0, brightness=0,
                      contrast=0, p_downscale=1.0, downscale=(1.0, 1.0),
                      source_scale=(1.0, 1.0), source_translate=0.0)


@pytest.fixture(params=FACES)
def face(request):
    return face_crop(request.param)


def test_deterministic_given_seed(face):
    img, lm = face
    a = S.sbi_pair(img, lm, np.random.default_rng(7))
    b = S.sbi_pair(img, lm, np.random.default_rng(7))
    c = S.sbi_pair(img, lm, np.random.default_rng(8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.fake, c.fake)


@pytest.mark.parametrize("size, mask_scale", [(256, 0.5), (97, 0.5), (256, 1.0), (75, 1.0)])
def test_pair_shapes_and_ranges(face, size, mask_scale):
    img, lm = face
    cfg = S.SBIConfig(size=size, mask_scale=mask_scale)
    for seed in range(4):
        out = S.sbi_pair(img, lm, np.random.default_rng(seed), cfg)
        assert out.real.shape == out.fake.shape == (size, size, 3)
        assert out.real.dtype == out.fake.dtype == np.uint8
        assert out.mask.shape == (size, size) and out.mask.dtype == np.float32
        assert 0.0 <= out.mask.min() and out.mask.max() <= 1.0 + 1e-6 and out.mask.max() > 0
        assert out.landmarks.shape == (68, 2)
        assert (out.landmarks > -1).all() and (out.landmarks < size + 1).all()


def test_blend_keeps_size_and_peak_is_a_blend_ratio(face):
    img, lm = face
    ratios = set()
    for seed in range(24):
        fake, mask = S.sbi(img, lm, np.random.default_rng(seed))
        assert fake.shape == img.shape and mask.shape == img.shape[:2]
        peak = float(mask.max())
        assert min(abs(peak - r) for r in S.DEFAULT.blend_ratios) < 1e-5
        ratios.add(round(peak, 2))
    assert ratios == {0.25, 0.5, 0.75, 1.0}


def test_neutral_stg_returns_the_image(face):
    """With identical source and target, alpha blending is the identity (up to rounding)."""
    img, lm = face
    fake, mask = S.blend(img, lm, np.random.default_rng(0), NEUTRAL)
    assert mask.max() > 0
    assert np.abs(fake.astype(int) - img.astype(int)).max() <= 1


def test_fake_differs_inside_the_mask_only(face):
    """Target kept intact (source augmented): outside the mask the fake is the real image."""
    img, lm = face
    cfg = dataclasses.replace(S.DEFAULT, p_augment_source=1.0)
    for seed in range(6):
        fake, mask = S.blend(img, lm, np.random.default_rng(seed), cfg)
        diff = np.abs(fake.astype(int) - img.astype(int)).max(axis=2)
        assert (diff[mask == 0] <= 1).all()
        assert diff[mask > 0.5 * mask.max()].mean() > diff[mask == 0].mean() + 1


def test_post_augmentation_is_shared(face):
    """Far from the blended region (beyond JPEG's 16-px chroma blocks), real == fake exactly:
    crop, flip, colour jitter and JPEG were the same for both."""
    import cv2

    img, lm = face
    cfg = dataclasses.replace(S.DEFAULT, p_augment_source=1.0, p_jpeg=1.0)
    for seed in range(4):
        out = S.sbi_pair(img, lm, np.random.default_rng(seed), cfg)
        near = cv2.dilate((out.mask > 0).astype(np.uint8), np.ones((41, 41), np.uint8))
        assert (near == 0).sum() > 1000
        np.testing.assert_array_equal(out.real[near == 0], out.fake[near == 0])
        assert not np.array_equal(out.real, out.fake)


def test_mask_follows_the_face(face):
    img, lm = face
    x0, y0 = lm.min(axis=0) - 0.25 * (lm.max(axis=0) - lm.min(axis=0))
    x1, y1 = lm.max(axis=0) + 0.25 * (lm.max(axis=0) - lm.min(axis=0))
    for seed in range(8):
        _, mask = S.blend(img, lm, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask > 0.05)
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        nose = np.round(lm[30]).astype(int)  # the nose tip is inside every hull variant
        assert mask[nose[1], nose[0]] > 0


def test_hull_variants(face):
    img, lm = face
    shape = img.shape[:2]
    inside = {v: S.hull_mask(lm, shape, v) for v in S.HULLS}
    at = lambda m, p: m[int(round(p[1])), int(round(p[0]))]  # noqa: E731
    chin, nose, between_eye_and_mouth = lm[8], lm[30], (lm[36] + lm[48]) / 2
    assert at(inside["full"], chin) and at(inside["full"], nose)
    assert not at(inside["inner"], chin) and at(inside["inner"], nose)
    assert not at(inside["components"], between_eye_and_mouth) and at(inside["components"], nose)
    above_brows = lm[19] + 0.5 * (lm[27] - lm[30])
    assert at(inside["extended"], above_brows) and not at(inside["full"], above_brows)
    assert inside["inner"].sum() < inside["full"].sum() < inside["extended"].sum()
    with pytest.raises(ValueError, match="unknown hull variant 'oval'"):
        S.hull_mask(lm, shape, "oval")


def test_81_points_include_forehead(face):
    img, lm = face
    up = lm[27] - lm[30]
    forehead = np.linspace(lm[17], lm[26], 13) + 0.7 * up  # stand-in for points 68..80
    lm81 = np.concatenate([lm, forehead]).astype(np.float32)
    full81 = S.hull_mask(lm81, img.shape[:2], "full")
    full68 = S.hull_mask(lm, img.shape[:2], "full")
    p = np.round((lm[21] + lm[22]) / 2 + 0.4 * up).astype(int)  # mid-forehead
    assert full81[p[1], p[0]] == 1 and full68[p[1], p[0]] == 0
    out = S.sbi_pair(img, lm81, np.random.default_rng(0))
    assert out.landmarks.shape == (81, 2)


def test_hflip_is_an_involution_and_keeps_semantics(face):
    img, lm = face
    f_img, f_lm = S.hflip(img, lm)
    assert f_lm[36, 0] < f_lm[45, 0]  # point 36 is still the corner on the image's left
    np.testing.assert_allclose(f_lm[30, 0], img.shape[1] - lm[30, 0])
    b_img, b_lm = S.hflip(f_img, f_lm)
    np.testing.assert_array_equal(b_img, img)
    np.testing.assert_allclose(b_lm, lm)
    assert sorted(S.MIRROR_68) == list(range(68))
    np.testing.assert_array_equal(S.MIRROR_68[S.MIRROR_68], np.arange(68))


def test_random_crop_keeps_landmarks_on_the_face(face):
    img, lm = face
    for seed in range(5):
        crop, clm = S.random_crop(img, lm, np.random.default_rng(seed))
        assert crop.shape == (256, 256, 3)
        # margins of 4-20 % per side (+10 % above the brows): the landmarks fill most of it
        lo, hi = S.DEFAULT.crop_margin
        top = S.DEFAULT.crop_top_extra
        span = clm.max(axis=0) - clm.min(axis=0)
        assert span[0] >= 256 / (1 + 2 * hi) - 1 and span[1] >= 256 / (1 + top + 2 * hi) - 1
        assert (span <= 256 / (1 + 2 * lo) + 1).all() and (clm.min(axis=0) >= 0).all()


def test_eval_crop_sits_in_the_middle_of_the_training_margins(face):
    img, lm = face
    crop, clm = S.eval_crop(img, lm)
    again, _ = S.eval_crop(img, lm)
    np.testing.assert_array_equal(crop, again)
    mid, top = sum(S.DEFAULT.crop_margin) / 2, S.DEFAULT.crop_top_extra
    np.testing.assert_allclose(clm.min(axis=0), [256 * mid / (1 + 2 * mid),
                                                 256 * (mid + top) / (1 + 2 * mid + top)],
                               rtol=1e-4)


def test_augment_is_deterministic_and_crops(face):
    """augment(): SBI's crop, flip and post-augmentation for frames that are not blended."""
    img, lm = face
    out, olm = S.augment(img, lm, np.random.default_rng(3))
    assert out.shape == (256, 256, 3) and olm.shape == (68, 2)
    a, _ = S.augment(img, lm, np.random.default_rng(3))
    np.testing.assert_array_equal(out, a)


def test_variety_over_seeds(face):
    """Every hull variant, both STG branches and JPEG occur; fakes are all different."""
    img, lm = face
    fakes = {S.sbi_pair(img, lm, np.random.default_rng(s)).fake.tobytes() for s in range(12)}
    assert len(fakes) == 12


@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 8), np.uint8), "uint8 \\[H, W, 3\\]"),
    (np.zeros((8, 8, 3), np.float32), "uint8 \\[H, W, 3\\]"),
])
def test_bad_image(bad, match):
    with pytest.raises(ValueError, match=match):
        S.sbi(bad, np.zeros((68, 2), np.float32), np.random.default_rng(0))


@pytest.mark.parametrize("shape", [(5, 2), (68, 3), (68,)])
def test_bad_landmarks(shape):
    with pytest.raises(ValueError, match="landmarks must be"):
        S.sbi(np.zeros((64, 64, 3), np.uint8), np.zeros(shape, np.float32),
              np.random.default_rng(0))


def test_non_finite_landmarks():
    lm = np.full((68, 2), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        S.sbi(np.zeros((64, 64, 3), np.uint8), lm, np.random.default_rng(0))


def test_bad_config():
    with pytest.raises(ValueError, match="hulls must be"):
        S.SBIConfig(hulls=("oval",))
