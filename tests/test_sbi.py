"""SBI (Shiohara and Yamasaki, CVPR 2022) on real photographs: csdfd/data/sbi.py, as published."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from realfaces import face_crop

from csdfd.data import sbi as S
from csdfd.data import sbi_geometry as G
from csdfd.data import sbi_parts as P

FACES = ["astronaut", "grace_hopper"]
# no STG difference between source and target: the blend must give back the image
NEUTRAL = S.SBIConfig(
    stg_colour=P.ColourSpec(0, 0, 0, 0, 0, 0, 0), downscale=(1,), sharpen_alpha=(0.0, 0.0),
    source_scale=(1.0, 1.0), source_translate=(0.0, 0.0))


def with_forehead(lm: np.ndarray) -> np.ndarray:
    """68 dlib points plus 13 forehead points stored in the 81-point model's order: an arc
    above the brows, left to right, placed at the indices of :data:`S.FOREHEAD_ORDER`."""
    up = lm[27] - lm[30]  # from the nose tip to the bridge
    t = np.linspace(0.0, 1.0, 13)[:, None]
    row = lm[17] + t * (lm[26] - lm[17]) + (0.6 + 0.5 * np.sin(np.pi * t)) * up
    out = np.zeros((81, 2), np.float32)
    out[:68] = lm
    out[list(S.FOREHEAD_ORDER)] = row
    return out


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


@pytest.mark.parametrize("size", [256, 97, 380])
@pytest.mark.parametrize("points", [68, 81])
def test_pair_shapes_and_ranges(face, size, points):
    img, lm = face
    lm = with_forehead(lm) if points == 81 else lm
    cfg = S.SBIConfig(size=size)
    for seed in range(3):
        out = S.sbi_pair(img, lm, np.random.default_rng(seed), cfg)
        assert out.real.shape == out.fake.shape == (size, size, 3)
        assert out.real.dtype == out.fake.dtype == np.uint8
        assert out.mask.shape == (size, size) and out.mask.dtype == np.float32
        assert 0.0 <= out.mask.min() and out.mask.max() <= 1.0 + 1e-6 and out.mask.max() > 0
        assert out.landmarks.shape == (points, 2)
        assert (out.landmarks > -1).all() and (out.landmarks < size + 1).all()


@pytest.mark.parametrize("points", [68, 81])
@pytest.mark.parametrize("augment_source", [True, False], ids=["source-aug", "target-aug"])
@pytest.mark.parametrize("hull", S.HULLS)
def test_real_equals_fake_outside_the_mask(face, hull, augment_source, points):
    """Issue 13: the real is the very image the fake was blended into, whichever copy the
    source-target generator augmented. Without JPEG they agree exactly wherever the mask is 0;
    with JPEG, beyond the 16-pixel blocks (and their chroma neighbours) the mask touches."""
    img, lm = face
    lm = with_forehead(lm) if points == 81 else lm
    branch = dict(hulls=(hull,), p_forehead=1.0, p_augment_source=float(augment_source))
    other = dict(branch, p_augment_source=1.0 - float(augment_source))
    for seed, p_jpeg in [(0, 0.0), (1, 1.0)]:
        cfg = dataclasses.replace(S.DEFAULT, p_jpeg=p_jpeg, **branch)
        out = S.sbi_pair(img, lm, np.random.default_rng(seed), cfg)
        if p_jpeg == 0:
            outside = out.mask == 0
        else:
            outside = cv2.dilate((out.mask > 0).astype(np.uint8), np.ones((41, 41))) == 0
        assert outside.sum() > 2000
        np.testing.assert_array_equal(out.real[outside], out.fake[outside])
        diff = np.abs(out.real.astype(int) - out.fake).max(axis=2)
        assert diff[out.mask > 0.5 * out.mask.max()].mean() > 1.0  # the blend did something
        # same draws, other branch: the real changes (the target was, or was not, augmented)
        swapped = S.sbi_pair(img, lm, np.random.default_rng(seed),
                             dataclasses.replace(cfg, **other))
        assert np.abs(swapped.real.astype(int) - out.real)[outside].mean() > 0.5


@pytest.mark.parametrize("points", [68, 81])
def test_blend_and_registry_pair_the_fake_with_its_target(face, points):
    """blend() returns the target as the real; the registry entry, which has no real to
    return, always augments the source, so its fake equals its input outside the mask."""
    img, lm = face
    lm = with_forehead(lm) if points == 81 else lm
    kept = 0
    for seed in range(16):
        real, fake, mask = S.blend(img, lm, np.random.default_rng(seed))
        np.testing.assert_array_equal(real[mask == 0], fake[mask == 0])
        kept += np.array_equal(real, img)
        fake, mask = S.sbi(img, lm, np.random.default_rng(seed))
        np.testing.assert_array_equal(fake[mask == 0], img[mask == 0])
    assert 3 <= kept <= 13  # the target is augmented half of the time (binomial, 16 draws)


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
    """With identical source and target, alpha blending is the identity."""
    img, lm = face
    for seed in range(4):
        real, fake, mask = S.blend(img, lm, np.random.default_rng(seed), NEUTRAL)
        assert mask.max() > 0
        np.testing.assert_array_equal(fake, img)
        np.testing.assert_array_equal(real, img)


def test_post_jpeg_of_the_region_is_jpeg_of_the_frame(face):
    """_post codes only the crop's blocks (plus one around): the crop gets exactly what JPEG of
    the whole blend frame gives it."""
    img, lm = face
    cfg = dataclasses.replace(S.DEFAULT, p_jpeg=1.0)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        f = G.frame(lm, img.shape, S._margins(lm, rng, cfg), cfg.frame_margin, cfg.size)
        whole = G.reader(img, f)((0, 0, f.shape[1], f.shape[0]))
        x0, y0, x1, y1 = f.region
        post = S._post([whole[y0:y1, x0:x1].copy()], f, np.random.default_rng(seed), cfg)[0]
        r = np.random.default_rng(seed)
        colour = P.sample_colour(r, cfg.post_colour)
        r.random()
        quality = int(r.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        (x, y), s = f.offset, cfg.size
        full = P.jpeg(P.apply_colour(whole, colour), quality)[y:y + s, x:x + s]
        np.testing.assert_array_equal(post, full)


def test_mask_follows_the_face(face):
    img, lm = face
    x0, y0 = lm.min(axis=0) - 0.3 * (lm.max(axis=0) - lm.min(axis=0))
    x1, y1 = lm.max(axis=0) + 0.3 * (lm.max(axis=0) - lm.min(axis=0))
    for seed in range(8):
        _, mask = S.sbi(img, lm, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask > 0.05)
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        nose = np.round(lm[30]).astype(int)  # the nose tip is inside every hull variant
        assert mask[nose[1], nose[0]] > 0


#: Face X-ray's DeepFakeMask parts (AlgoHunt/Face-Xray), written out from its source.
DFL_FULL = [[*range(0, 17), *range(48, 68), 0, 8, 16], [27, 28, 29, 30, 33],
            [*range(17, 27), 0, 27, 16, 33]]
COMPONENTS = [[*range(0, 9), 17], [*range(8, 17), 26], [17, 18, 19, 8], [24, 25, 26, 8],
              [*range(19, 25), 8], [*range(17, 22), 27, *range(31, 36), 8],
              [*range(22, 27), 27, *range(31, 36), 8], [*range(27, 31), *range(31, 36)]]


def _union(lm, parts, shape):
    out = np.zeros(shape, np.uint8)
    for idx in parts:
        hull = cv2.convexHull(np.round(lm[idx] * 16).astype(np.int32))
        cv2.fillConvexPoly(out, hull, 1, lineType=cv2.LINE_8, shift=4)
    return out


def test_hull_variants(face):
    img, lm = face
    shape = img.shape[:2]
    inside = {v: P.hull_mask(lm, shape, v) for v in S.HULLS}
    at = lambda m, p: m[int(round(p[1])), int(round(p[0]))]  # noqa: E731
    for v in S.HULLS:
        assert at(inside[v], lm[30]) and at(inside[v], lm[8] + (lm[57] - lm[8]) * 0.2)
    np.testing.assert_array_equal(inside["dfl_full"], _union(lm, DFL_FULL, shape))
    np.testing.assert_array_equal(inside["components"], _union(lm, COMPONENTS, shape))
    # extended: the same eight parts with the brows raised, reaching above them
    above_brows = lm[19] + 0.2 * (lm[19] - lm[37])
    assert at(inside["extended"], above_brows) and not at(inside["components"], above_brows)
    assert inside["extended"].sum() > inside["components"].sum()
    np.testing.assert_array_equal(inside["extended"], _union(P.raise_brows(lm), COMPONENTS,
                                                             shape))
    hull = cv2.convexHull(np.round(lm * 16).astype(np.int32))  # facehull: anti-aliased edge
    assert len(np.unique(inside["facehull"])) > 2  # fractional edge pixels
    area = cv2.contourArea(hull.astype(np.float32)) / 256  # of the hull of all the points
    assert inside["facehull"].sum() == pytest.approx(area, rel=0.03)
    with pytest.raises(ValueError, match="unknown hull variant 'oval'"):
        P.hull_mask(lm, shape, "oval")


def test_raise_brows_moves_each_brow_half_its_height_above_the_lid(face):
    _, lm = face
    up = P.raise_brows(lm)
    np.testing.assert_array_equal(np.delete(up, np.r_[17:27], axis=0),
                                  np.delete(lm, np.r_[17:27], axis=0))
    np.testing.assert_allclose(up[19] - lm[19], (lm[19] - lm[37]) / 2, atol=1e-4)
    np.testing.assert_allclose(up[24] - lm[24], (lm[24] - lm[44]) / 2, atol=1e-4)
    ql = lm[36] + ((lm[36] + lm[0]) / 2 - lm[36]) / 2  # a quarter of the way to the face side
    np.testing.assert_allclose(up[17] - lm[17], (lm[17] - ql) / 2, atol=1e-4)


def test_81_points_add_the_forehead_to_facehull_only(face):
    img, lm = face
    lm81 = with_forehead(lm)
    shape = img.shape[:2]
    p = np.round((lm[21] + lm[22]) / 2 + 0.6 * (lm[27] - lm[30])).astype(int)  # mid-forehead
    assert P.hull_mask(lm81, shape, "facehull")[p[1], p[0]] == 1
    assert P.hull_mask(lm, shape, "facehull")[p[1], p[0]] == 0
    for v in ("dfl_full", "extended", "components"):  # Face X-ray's other hulls: 68 points
        np.testing.assert_array_equal(P.hull_mask(lm81, shape, v), P.hull_mask(lm, shape, v))


def test_forehead_kept_75_percent_of_the_time(face):
    img, lm = face
    small = cv2.resize(img, (96, 96))
    lm81 = with_forehead(lm * 96 / img.shape[1])
    p = np.round((lm81[21] + lm81[22]) / 2 + 0.6 * (lm81[27] - lm81[30])).astype(int)
    cfg = dataclasses.replace(S.DEFAULT, hulls=("facehull",), blur_kernel=(5, 5),
                              blend_ratios=(1.0,), source_translate=(0.0, 0.0))
    hits = sum(S.blend(small, lm81, np.random.default_rng(s), cfg).mask[p[1], p[0]] > 0.5
               for s in range(160))
    assert 100 <= hits <= 140  # binomial(160, 0.75): mean 120, sd 5.5


def test_published_stg_and_post_probabilities_and_ranges():
    rng = np.random.default_rng(0)
    n = 4000
    for spec, p_hsv_bc, bc_limit in [(S.DEFAULT.stg_colour, 1.0, 0.1),
                                     (S.DEFAULT.post_colour, 0.3, 0.3)]:
        draws = [P.sample_colour(rng, spec) for _ in range(n)]
        rgb = [d.rgb for d in draws if d.rgb is not None]
        hsv = [d.hsv for d in draws if d.hsv is not None]
        bc = [d.gain_bias for d in draws if d.gain_bias is not None]
        assert abs(len(rgb) / n - 0.3) < 0.04  # RGB shift with p = 0.3 in both
        assert abs(len(hsv) / n - p_hsv_bc) < 0.04 and abs(len(bc) / n - p_hsv_bc) < 0.04
        assert np.abs(rgb).max() <= 20 and np.abs(rgb).max() > 19.5
        assert np.abs(hsv).max() <= 0.3 and np.abs(hsv).max() > 0.29
        gain, bias = np.array(bc).T
        assert np.abs(gain - 1).max() <= bc_limit and np.abs(gain - 1).max() > 0.97 * bc_limit
        assert np.abs(bias).max() <= bc_limit and np.abs(bias).max() > 0.97 * bc_limit
    freq = [P.sample_frequency(rng, (2, 4), (0.2, 0.5), (0.5, 1.0)) for _ in range(n)]
    down = [f.ratio for f in freq if f.ratio is not None]
    assert abs(len(down) / n - 0.5) < 0.04 and set(down) == {2, 4}
    sharp = np.array([(f.alpha, f.lightness) for f in freq if f.ratio is None])
    assert sharp[:, 0].min() >= 0.2 and sharp[:, 0].max() <= 0.5
    assert sharp[:, 1].min() >= 0.5 and sharp[:, 1].max() <= 1.0


def test_published_mask_blur_ranges():
    rng = np.random.default_rng(0)
    blurs = [P.sample_blur(rng, (192, 256), (5, 25), (5, 45)) for _ in range(3000)]
    sizes = np.array([b.size for b in blurs])
    assert sizes.min() == 192 and sizes.max() == 256
    assert {b.k1 for b in blurs} == {b.k2 for b in blurs} == set(range(5, 26, 2))
    assert {b.sigma2 for b in blurs} == set(map(float, range(5, 46)))
    # the first blur keeps only its maximum: the hull is eroded, then blurred to peak 1
    mask = np.zeros((200, 200), np.float32)
    mask[60:140, 50:150] = 1
    soft = P.soften(mask, P.Blur((200, 200), 25, 5, 5.0))
    assert soft.max() == pytest.approx(1.0)
    assert soft[100, 100] == pytest.approx(1.0) and soft[100, 50] == 0
    assert soft[100, 62] < 1 and soft[100, 75] == pytest.approx(1.0)


def test_published_source_affine_ranges():
    rng = np.random.default_rng(0)
    a = np.stack([S._source_affine(400, 300, rng, S.DEFAULT) for _ in range(2000)])
    sx, sy = a[:, 0, 0], a[:, 1, 1]
    assert sx.min() >= 0.95 - 1e-6 and sx.max() <= 1 / 0.95 + 1e-6 and sx.max() > 1.04
    assert abs(np.corrcoef(sx, sy)[0, 1]) < 0.1  # x and y scaled apart, as albumentations does
    c = np.array([199.5, 149.5])  # about the image centre: shift = that of the centre
    shift = np.einsum("nij,j->ni", a[:, :, :2], c) + a[:, :, 2] - c
    assert np.abs(shift[:, 0]).max() <= 12 + 1e-3 and np.abs(shift[:, 0]).max() > 11.5
    assert np.abs(shift[:, 1]).max() <= 4.5 + 1e-3 and np.abs(shift[:, 1]).max() > 4.3


def test_elastic_field_matches_albumentations():
    """alpha = 50, sigma = 7 of scipy-smoothed uniform noise: same spread and correlation."""
    from scipy.ndimage import gaussian_filter

    ours = np.concatenate([P.elastic_field((200, 230), np.random.default_rng(s), 50.0, 7.0)
                           for s in range(6)])
    ref = np.stack([gaussian_filter(np.random.default_rng(50 + s).random((200, 230)) * 2 - 1, 7)
                    * 50 for s in range(12)])

    def corr(x, lag):
        return np.mean([np.corrcoef(a[:, :-lag].ravel(), a[:, lag:].ravel())[0, 1] for a in x])

    assert ours.std() == pytest.approx(ref.std(), rel=0.08)
    for lag in (3, 7, 14):
        assert corr(ours, lag) == pytest.approx(corr(ref, lag), abs=0.05)


def test_frequency_and_colour_ops_follow_the_published_semantics():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    img = np.repeat(checker[..., None], 3, axis=2)
    down = P.apply_frequency(img, P.Frequency(2, 0.0, 1.0))  # nearest 2x down: one phase left
    assert len(np.unique(down)) == 1
    k = P.sharpen_kernel(0.4, 0.5)
    assert k.sum() == pytest.approx(1 - 0.4 * 0.5)  # Sharpen also darkens (lightness < 1)
    flat = np.full((16, 16, 3), 200, np.uint8)
    assert P.apply_frequency(flat, P.Frequency(None, 0.4, 0.5))[8, 8, 0] == 160
    rgb = P.apply_colour(flat, P.Colour(np.array([10.7, -0.4, 80.0]), None, None))
    np.testing.assert_array_equal(rgb[0, 0], [210, 199, 255])  # clipped and truncated
    rnd = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    up = P.apply_colour(rnd, P.Colour(None, np.array([0.3, 0.3, 0.3]), None))
    round_trip = cv2.cvtColor(cv2.cvtColor(rnd, cv2.COLOR_RGB2HSV), cv2.COLOR_HSV2RGB)
    np.testing.assert_array_equal(up, round_trip)  # +0.3 truncates to no shift at all


def test_hflip_is_an_involution_and_keeps_semantics(face):
    img, lm = face
    for points in (lm, with_forehead(lm)):
        f_img, f_lm = S.hflip(img, points)
        assert f_lm[36, 0] < f_lm[45, 0]  # point 36 is still the corner on the image's left
        np.testing.assert_allclose(f_lm[30, 0], img.shape[1] - points[30, 0])
        b_img, b_lm = S.hflip(f_img, f_lm)
        np.testing.assert_array_equal(b_img, img)
        np.testing.assert_allclose(b_lm, points)
    row = f_lm[list(S.FOREHEAD_ORDER), 0]
    assert (np.diff(row) > 0).all()  # the forehead row still runs left to right
    for perm, n in ((S.MIRROR_68, 68), (S.MIRROR_81, 81)):
        assert sorted(perm) == list(range(n))
        np.testing.assert_array_equal(perm[perm], np.arange(n))


def test_random_crop_keeps_landmarks_on_the_face(face):
    img, lm = face
    lo, hi = S.DEFAULT.crop_margin
    assert (lo, hi) == (0.05, 0.20)  # SBI's box / 4 x U(0.2, 0.8) per side
    for seed in range(5):
        crop, clm = S.random_crop(img, lm, np.random.default_rng(seed))
        assert crop.shape == (256, 256, 3)
        top = S.DEFAULT.crop_top_extra
        span = clm.max(axis=0) - clm.min(axis=0)
        assert span[0] >= 256 / (1 + 2 * hi) - 1 and span[1] >= 256 / (1 + top + 2 * hi) - 1
        assert (span <= 256 / (1 + 2 * lo) + 1).all() and (clm.min(axis=0) >= 0).all()


def test_pair_crop_is_the_random_crop_of_the_same_margins(face):
    """The training crop is a slice of the blend frame: the same pixels as cropping directly."""
    img, lm = face
    cfg = dataclasses.replace(S.DEFAULT, p_flip=0.0)
    margins = S._margins(lm, np.random.default_rng(3), cfg)
    f = G.frame(lm, img.shape, margins, cfg.frame_margin, cfg.size)
    (x, y), s = f.offset, cfg.size
    sliced = G.reader(img, f)((x, y, x + s, y + s))
    direct, _ = S._crop(img, lm, margins, s)
    assert np.abs(sliced.astype(int) - direct).max() <= 1


def test_eval_crop_sits_in_the_middle_of_the_training_margins(face):
    img, lm = face
    crop, clm = S.eval_crop(img, lm)
    again, _ = S.eval_crop(img, lm)
    np.testing.assert_array_equal(crop, again)
    mid, top = sum(S.DEFAULT.crop_margin) / 2, S.DEFAULT.crop_top_extra
    np.testing.assert_allclose(clm.min(axis=0), [256 * mid / (1 + 2 * mid),
                                                 256 * (mid + top) / (1 + 2 * mid + top)],
                               rtol=1e-4)
    np.testing.assert_allclose(S.eval_crop_landmarks(lm), clm, atol=1e-4)


def test_augment_is_deterministic_and_crops(face):
    """augment(): SBI's crop, flip and post-augmentation for frames that are not blended."""
    img, lm = face
    out, olm = S.augment(img, lm, np.random.default_rng(3))
    assert out.shape == (256, 256, 3) and olm.shape == (68, 2)
    a, _ = S.augment(img, lm, np.random.default_rng(3))
    np.testing.assert_array_equal(out, a)


def test_variety_over_seeds(face):
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


@pytest.mark.parametrize("shape", [(5, 2), (68, 3), (68,), (80, 2)])
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
    with pytest.raises(ValueError, match="blur_kernel must be"):
        S.SBIConfig(blur_kernel=(4, 25))
