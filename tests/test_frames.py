"""Face frames on disk (csdfd/data/frames.py): csdfd indexes, DeepfakeBench JSON, benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from realfaces import face_crop

from csdfd import preprocess as P
from csdfd.data import frames as FR
from csdfd.data import load_benchmark
from csdfd.data.layouts import Video
from csdfd.data.sbi import eval_crop

FACE, LM = face_crop("astronaut")
SPLIT_IDS = {"train": ("071", "054"), "val": ("720", "672"), "test": ("000", "003")}


def write_video(out: Path, video: Video, n: int, shift: float) -> None:
    """A finished video folder as python -m csdfd.preprocess writes it (n frames)."""
    folder = P.video_dir(out, video)
    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        names.append(f"{i * 10:06d}.png")
        img = np.roll(FACE, int(shift) + i, axis=1)
        cv2.imwrite(str(folder / names[-1]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    lms = np.stack([LM + [shift + i, 0] for i in range(n)]).astype(np.float32)
    np.save(folder / "landmarks.npy", lms)
    P.write_json(folder / "video.json", {
        "key": video.key, "method": video.method, "video_id": video.video_id,
        "label": video.label, "split": video.split, "quality": video.quality,
        "status": "ok", "frames": names, "error": None})


def make_faces(out: Path, videos: list[Video], n: int = 4, dataset: str = "ffpp") -> Path:
    for k, v in enumerate(videos):
        write_video(out, v, n, shift=k)
    P.build_index(out, videos, {"dataset": dataset})
    return out


def ffpp_videos(quality="c23") -> list[Video]:
    out = []
    for split, (a, b) in SPLIT_IDS.items():
        out += [Video("ffpp", "youtube", i, 0, split, Path(i), quality) for i in (a, b)]
        for m in ("Deepfakes", "FaceSwap"):
            out += [Video("ffpp", m, f"{a}_{b}", 1, split, Path("x"), quality)]
    return out


def celebdf_videos() -> list[Video]:
    return [Video("celebdf", "Celeb-real", "id0_0000", 0, "test", Path("x")),
            Video("celebdf", "Celeb-synthesis", "id0_id1_0000", 1, "test", Path("x")),
            Video("celebdf", "Celeb-real", "id1_0001", 0, "train", Path("x"))]


@pytest.fixture
def ffpp(tmp_path):
    return make_faces(tmp_path / "ffpp", ffpp_videos())


def test_open_csdfd_index(ffpp):
    name, videos = FR.open_faces(f"ffpp:{ffpp}", quality="c23")
    assert name == "ffpp" and len(videos) == 12
    by_key = {v.key: v for v in videos}
    v = by_key["ffpp/Deepfakes/000_003"]
    assert (v.label, v.split, len(v.frames)) == (1, "test", 4) and v.frames[0].exists()
    assert v.landmark_rows().shape == (4, 68, 2)


def test_spec_options(ffpp):
    _, videos = FR.open_faces(f"ffpp:{ffpp},methods=FaceSwap,frames=2")
    assert {v.method for v in videos} == {"youtube", "FaceSwap"}
    frames = FR.DiskFrames(videos, crop=False)
    assert len(frames) == 2 * len(videos)
    # frames 0 and 3 of each video are kept, with their own landmark rows
    _, lms = frames.raw([0, 1])
    np.testing.assert_allclose(lms[1] - lms[0], np.tile([3.0, 0.0], (68, 1)))
    with pytest.raises(ValueError, match="quality c23, not c40"):
        FR.open_faces(f"ffpp:{ffpp}", quality="c40")
    with pytest.raises(ValueError, match="unknown options \\['qualty'\\]"):
        FR.open_faces(f"ffpp:{ffpp},qualty=c40")
    with pytest.raises(ValueError, match="holds dataset 'ffpp', not 'celebdf'"):
        FR.open_faces(f"celebdf:{ffpp}")


def test_missing_index_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m csdfd.preprocess celebdf:"):
        FR.open_faces(f"celebdf:{tmp_path}")


def test_disk_frames_serve_the_eval_crop(ffpp):
    _, videos = FR.open_faces(f"ffpp:{ffpp}")
    frames = FR.DiskFrames(videos)
    idx = np.array([5, 0, 13])
    imgs, lms = frames.images(idx), frames.landmarks(idx)
    raw, raw_lm = frames.raw(idx)
    assert imgs.shape == (3, 256, 256, 3) and imgs.dtype == np.uint8
    for k in range(3):
        crop, clm = eval_crop(raw[k], raw_lm[k])
        np.testing.assert_array_equal(imgs[k], crop)
        np.testing.assert_allclose(lms[k], clm, atol=1e-4)
    assert frames.labels.tolist() == [v.label for v in videos for _ in range(4)]
    assert [frames.keys[frames.video[i]] for i in idx] == [videos[1].key, videos[0].key,
                                                           videos[3].key]


def test_disk_frames_pickle_for_dataloader_workers(ffpp):
    import pickle

    _, videos = FR.open_faces(f"ffpp:{ffpp}")
    frames = FR.DiskFrames(videos)
    first = frames.landmarks([3])
    copy = pickle.loads(pickle.dumps(frames))
    np.testing.assert_array_equal(copy.landmarks([3]), first)
    np.testing.assert_array_equal(copy.images([3]), frames.images([3]))


def test_unreadable_frame_is_named(ffpp):
    _, videos = FR.open_faces(f"ffpp:{ffpp}")
    videos[0].frames[0].unlink()
    with pytest.raises(FileNotFoundError, match="cannot read frame .*000000.png"):
        FR.DiskFrames(videos).images([0])


def cfg(data: str, test=(), img_size=128) -> SimpleNamespace:
    return SimpleNamespace(data=data, test=list(test), quality="c23", img_size=img_size)


def test_load_benchmark(ffpp, tmp_path):
    celeb = make_faces(tmp_path / "celeb", celebdf_videos(), dataset="celebdf")
    bench = load_benchmark(cfg(f"ffpp:{ffpp}", [f"celebdf:{celeb}"]))
    assert (len(bench.train_real), len(bench.train_fake)) == (8, 8)
    assert set(bench.train_real.labels) == {0} and set(bench.train_fake.labels) == {1}
    assert len(bench.val) == len(bench.test) == 16 and len(bench.val_real) == 8
    assert list(bench.targets) == ["celebdf"] and len(bench.targets["celebdf"]) == 8
    assert bench.test.images([0]).shape == (1, 128, 128, 3)
    assert bench.train_real.landmarks([0]).shape == (1, 68, 2)


def test_load_benchmark_errors(ffpp, tmp_path):
    celeb = make_faces(tmp_path / "celeb", celebdf_videos(), dataset="celebdf")
    with pytest.raises(ValueError, match="no fake videos in its train split"):
        load_benchmark(cfg(f"celebdf:{celeb}"))
    with pytest.raises(ValueError, match="dataset 'celebdf' is given twice"):
        load_benchmark(cfg(f"ffpp:{ffpp}", [f"celebdf:{celeb}"] * 2))


# --- DeepfakeBench -------------------------------------------------------------------------


def make_dfb(root: Path, with_quality: bool) -> Path:
    """DeepfakeBench-style frames + 81-point landmarks and a JSON index whose paths start with
    a prefix from another machine."""
    base = root / "datasets" / "rgb" / "Celeb-DF-v2"
    index: dict = {"CelebDFv2_real": {}, "CelebDFv2_fake": {}}
    for label, folder, video, split in [("CelebDFv2_real", "Celeb-real", "id0_0000", "test"),
                                        ("CelebDFv2_fake", "Celeb-synthesis", "id0_id1_0000",
                                         "test"),
                                        ("CelebDFv2_real", "YouTube-real", "00001", "train")]:
        paths = []
        for i in range(3):
            frame = base / folder / "frames" / video / f"{i:03d}.png"
            frame.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(frame), FACE)
            lm_path = base / folder / "landmarks" / video / f"{i:03d}.npy"
            lm_path.parent.mkdir(parents=True, exist_ok=True)
            forehead = np.linspace(LM[17], LM[26], 13) + [0, -30]
            np.save(lm_path, np.concatenate([LM, forehead]).astype(np.float32))
            paths.append("/home/author/DeepfakeBench/" + frame.relative_to(root).as_posix())
        entry = {video: {"label": label, "frames": paths}}
        node = {"c23": entry} if with_quality else entry
        index[label].setdefault(split, {}).update(node)
    path = root / "Celeb-DF-v2.json"
    path.write_text(json.dumps({"Celeb-DF-v2": index}))
    return path


def test_deepfakebench_json(tmp_path):
    path = make_dfb(tmp_path, with_quality=False)
    name, videos = FR.open_faces(f"deepfakebench:{path},root={tmp_path}")
    assert name == "Celeb-DF-v2"
    t = {v.key: (v.label, v.split, len(v.frames)) for v in videos}
    assert t == {"Celeb-DF-v2/CelebDFv2_real/id0_0000": (0, "test", 3),
                 "Celeb-DF-v2/CelebDFv2_fake/id0_id1_0000": (1, "test", 3),
                 "Celeb-DF-v2/CelebDFv2_real/00001": (0, "train", 3)}
    frames = FR.DiskFrames(videos)
    assert frames.landmarks([0]).shape == (1, 81, 2)
    assert frames.images([0, 8]).shape == (2, 256, 256, 3)
    with pytest.raises(FileNotFoundError, match="pass ,root=DIR"):
        FR.open_faces(f"deepfakebench:{path},root={tmp_path / 'elsewhere'}")


def test_deepfakebench_json_with_qualities(tmp_path):
    path = make_dfb(tmp_path, with_quality=True)
    _, videos = FR.open_faces(f"deepfakebench:{path},root={tmp_path},quality=c23")
    assert len(videos) == 3 and {v.quality for v in videos} == {"c23"}


def test_training_batches_use_the_full_sbi(ffpp):
    """On real data, stream 2's reals and fakes are SBI pairs from the stored crops and the
    original fakes get the same augmentation; batches are a pure function of the step."""
    from csdfd.data import get_blend
    from csdfd.data.stream import StepDataset

    bench = load_benchmark(cfg(f"ffpp:{ffpp}"))
    ds = StepDataset(bench, get_blend("sbi"), batch_size=4, img_size=128, seed=0, epoch=0,
                     streams=(1, 2))
    a, b = ds[0], ds[0]
    assert set(a) == {"xr", "xf", "xs"}
    for k in a:
        assert a[k].shape == (4, 128, 128, 3) and a[k].dtype == torch.uint8
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["xr"], a["xs"])
    only_o = StepDataset(bench, get_blend("sbi"), 4, 128, 0, 0, streams=(1,))[0]
    assert set(only_o) == {"xr", "xf"}
    simple = StepDataset(bench, get_blend("simple"), 4, 128, 0, 0, streams=(1, 2))[0]
    assert simple["xs"].shape == (4, 128, 128, 3)
