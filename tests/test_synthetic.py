"""The embedded synthetic benchmark, the simple self-blend, the blend registry and the training
stream: determinism, layout, and errors on bad input."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from csdfd.config import resolve
from csdfd.data import (
    BLENDS,
    ArrayFrames,
    BlendedFrames,
    ConcatFrames,
    forgeries,
    get_blend,
    load_benchmark,
    render,
    selfblend,
    synthetic,
)
from csdfd.data.stream import StepDataset

SPEC = synthetic.SyntheticSpec(size=32, train_ids=4, val_ids=2, test_ids=2, frames=3,
                               eval_frames=2, seed=3)


@pytest.fixture(scope="module")
def bench():
    return synthetic.make_benchmark(SPEC, verbose=False)


def _arrays(b):
    sets = [b.train_real, b.train_fake, b.val, b.test, *b.targets.values()]
    return [s.images_ for s in sets] + [s.labels for s in sets]


def test_layout(bench):
    n_train = SPEC.train_ids * SPEC.frames
    assert len(bench.train_real) == len(bench.train_fake) == n_train
    assert (bench.train_real.labels == 0).all() and (bench.train_fake.labels == 1).all()
    assert set(bench.train_fake.kinds) == set(forgeries.SOURCE_FAMILIES)
    assert set(bench.targets) == set(forgeries.TARGET_FAMILIES)
    assert not set(forgeries.SOURCE_FAMILIES) & set(forgeries.TARGET_FAMILIES)
    for name, frames in bench.targets.items():
        assert set(frames.kinds) == {"real", name}
        assert frames.labels.sum() == len(frames) // 2
    assert set(bench.test.kinds) == {"real", *forgeries.SOURCE_FAMILIES}
    for s in (bench.train_real, bench.test, *bench.targets.values()):
        assert s.images_.shape[1:] == (32, 32, 3) and s.images_.dtype == np.uint8
        lm = s.landmarks(np.arange(len(s)))
        assert lm.shape == (len(s), 68, 2) and np.isfinite(lm).all()
        assert (lm > -8).all() and (lm < 40).all()  # on (or just off) the image


def test_deterministic_and_seeded(bench):
    again = synthetic.make_benchmark(SPEC, verbose=False)
    for a, b in zip(_arrays(bench), _arrays(again), strict=True):
        np.testing.assert_array_equal(a, b)
    other = synthetic.make_benchmark(dataclasses.replace(SPEC, seed=4), verbose=False)
    assert not np.array_equal(bench.train_real.images_, other.train_real.images_)


def test_sets_do_not_depend_on_other_sizes(bench):
    bigger = synthetic.make_benchmark(dataclasses.replace(SPEC, test_ids=3), verbose=False)
    np.testing.assert_array_equal(bench.train_real.images_, bigger.train_real.images_)
    np.testing.assert_array_equal(bench.train_fake.images_, bigger.train_fake.images_)
    np.testing.assert_array_equal(bench.val.images_, bigger.val.images_)


def test_identity_pools_are_disjoint():
    ids = synthetic._identities(SPEC, 0, 0, 8)
    skins = {tuple(np.round(i.skin, 6)) for i in ids}
    assert len(skins) == 8
    target_pool = synthetic._identities(SPEC, 1, 0, 8)
    assert not skins & {tuple(np.round(i.skin, 6)) for i in target_pool}


def test_render_landmarks_follow_pose():
    rng = np.random.default_rng(0)
    idn, fr = render.sample_identity(rng), render.sample_frame(rng)
    _, lm = render.render(idn, fr, 64)
    turned = dataclasses.replace(fr, yaw=fr.yaw + 0.4)
    _, lm2 = render.render(idn, turned, 64)
    assert lm.shape == (68, 2) and not np.allclose(lm, lm2)
    # nose tip (30) sticks out further than the jaw, so it moves more under yaw
    assert abs(lm2[30, 0] - lm[30, 0]) > abs(lm2[0, 0] - lm[0, 0])


def _face(size=48, seed=0):
    rng = np.random.default_rng(seed)
    idn, fr = render.sample_identity(rng), render.sample_frame(rng)
    img, lm = render.render(idn, fr, size)
    return render.finish(img, fr, rng), lm


@pytest.mark.parametrize("size", [32, 48, 67])
def test_self_blend(size):
    img, lm = _face(size)
    fake, mask = selfblend.self_blend(img, lm, np.random.default_rng(1))
    assert fake.shape == img.shape and fake.dtype == np.uint8
    assert mask.shape == img.shape[:2] and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1 and mask.max() > 0.2
    outside = mask == 0
    np.testing.assert_array_equal(fake[outside], img[outside])
    assert np.abs(fake.astype(int) - img).max() > 0
    again, mask2 = selfblend.self_blend(img, lm, np.random.default_rng(1))
    np.testing.assert_array_equal(fake, again)
    np.testing.assert_array_equal(mask, mask2)


@pytest.mark.parametrize(
    ("img", "lm", "match"),
    [(np.zeros((8, 8), np.uint8), np.zeros((68, 2)), "HxWx3 uint8"),
     (np.zeros((8, 8, 3), np.float32), np.zeros((68, 2)), "HxWx3 uint8"),
     (np.zeros((8, 8, 3), np.uint8), np.zeros((5, 2)), "68, 2"),
     (np.zeros((8, 8, 3), np.uint8), np.full((68, 2), np.nan), "finite")],
)
def test_self_blend_rejects_bad_input(img, lm, match):
    with pytest.raises(ValueError, match=match):
        selfblend.self_blend(img, lm, np.random.default_rng(0))


def test_blend_registry():
    assert get_blend("simple") is selfblend.self_blend
    with pytest.raises(ValueError, match="registered blends: .*simple"):
        get_blend("nope")
    img, lm = _face(64)
    for name in BLENDS:  # every entry resolves and honours the shared signature
        fn = get_blend(name)
        assert len(inspect.signature(fn).parameters) == 3
        fake, mask = fn(img, lm, np.random.default_rng(0))
        assert fake.shape == img.shape and fake.dtype == np.uint8
        assert mask.shape == img.shape[:2] and 0 <= mask.min() and mask.max() <= 1


def test_step_dataset_is_a_pure_function_of_seed_epoch_step(bench):
    blend = get_blend("simple")
    make = lambda epoch, streams=(1, 2): StepDataset(bench, blend, 4, 32, 0, epoch, streams)
    a, b = make(0)[1], make(0)[1]
    for key in ("xr", "xf", "xs"):
        assert a[key].shape == (4, 32, 32, 3)
        assert (a[key] == b[key]).all()
    assert not (make(0)[0]["xr"] == a["xr"]).all()
    assert not (make(1)[1]["xs"] == a["xs"]).all()
    assert set(make(0, (1,))[0]) == {"xr", "xf"} and set(make(0, (2,))[0]) == {"xr", "xs"}
    ds = make(0)
    seen = np.sort(np.concatenate([ds.real_order[s * 4:(s + 1) * 4] for s in range(len(ds))]))
    np.testing.assert_array_equal(seen, np.arange(len(ds) * 4))  # an epoch = one pass


def test_step_dataset_resizes_and_checks_batch(bench):
    ds = StepDataset(bench, get_blend("simple"), 4, 40, 0, 0, (1, 2))
    assert ds[0]["xs"].shape == (4, 40, 40, 3)
    with pytest.raises(ValueError, match="batch_size 99 exceeds"):
        StepDataset(bench, get_blend("simple"), 99, 32, 0, 0, (1, 2))


def test_blended_frames_are_stable(bench):
    blended = BlendedFrames(bench.val_real, get_blend("simple"), seed=5)
    assert len(blended) == len(bench.val_real) and (blended.labels == 1).all()
    idx = np.array([2, 0, 1])
    first, again = blended.images(idx), blended.images(idx[::-1])[::-1]
    np.testing.assert_array_equal(first, again)  # a function of the frame, not of the read
    assert first.shape == (3, 32, 32, 3) and not np.array_equal(first, bench.val_real.images(idx))
    np.testing.assert_array_equal(blended.landmarks(idx), bench.val_real.landmarks(idx))


def test_concat_frames_keeps_order(bench):
    cat = ConcatFrames([bench.val, bench.test])
    idx = np.array([len(bench.val) + 1, 0, len(bench.val), 2])
    expect = np.concatenate([bench.val.images_, bench.test.images_])[idx]
    np.testing.assert_array_equal(cat.images(idx), expect)
    assert len(cat) == len(bench.val) + len(bench.test)


def test_array_frames_validates():
    with pytest.raises(ValueError, match="uint8"):
        ArrayFrames(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        ArrayFrames(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 5]))


def test_missing_and_malformed_data_paths(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_benchmark(resolve({"data": str(missing)}))
    afile = tmp_path / "data.txt"
    afile.write_text("not a dataset")
    with pytest.raises(ValueError, match="data.txt.*name the dataset"):
        load_benchmark(resolve({"data": str(afile)}))
    with pytest.raises((OSError, ValueError), match="nowhere"):
        load_benchmark(resolve({"data": f"ffpp:{missing}"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises((OSError, ValueError), match="empty"):
        load_benchmark(resolve({"data": f"ffpp:{tmp_path / 'empty'}"}))
