"""DeepfakeBench dataset JSONs (csdfd/data/frames.py) in the shapes its rearrange.py writes.

The trees below follow DeepfakeBench's conventions: frames under ``datasets/rgb/DATASET/...``
with 81-point landmarks in the sibling ``landmarks/`` folder, the JSON in
``preprocessing/dataset_json/``, frame paths relative to ``datasets/rgb``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from realfaces import face_crop
from test_frames import ffpp_videos, make_faces

from csdfd.data import frames as FR
from csdfd.data import load_benchmark

FACE, LM = face_crop("astronaut")
README = Path(__file__).resolve().parents[1] / "README.md"


def frame_paths(rgb: Path, folder: str, video: str, n: int = 2) -> list[str]:
    """``n`` frames (and landmarks) of one video under ``rgb``; their paths relative to it."""
    paths = []
    for i in range(n):
        frame = rgb / folder / "frames" / video / f"{i:03d}.png"
        frame.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(frame), cv2.cvtColor(FACE, cv2.COLOR_RGB2BGR))
        lm = rgb / folder / "landmarks" / video / f"{i:03d}.npy"
        lm.parent.mkdir(parents=True, exist_ok=True)
        forehead = np.linspace(LM[17], LM[26], 13) + [0, -30]
        np.save(lm, np.concatenate([LM, forehead]).astype(np.float32))
        paths.append(frame.relative_to(rgb).as_posix())
    return paths


def write_json(dfb: Path, name: str, index: dict) -> Path:
    path = dfb / "preprocessing" / "dataset_json" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: index}))
    return path


def make_dfdc(dfb: Path) -> Path:
    """DFDC.json as rearrange.py leaves it when it reads ``test/`` before ``train/``: ``val`` of
    each label is first set to ``{"label", "frames"}`` of one test video, then the training
    videos are added beside those two keys."""
    rgb = dfb / "datasets" / "rgb"
    index = {}
    for label, fake in (("DFDC_Real", 0), ("DFDC_Fake", 1)):
        test_vid, train_vid = f"test{fake}", f"train{fake}"
        test = {"label": label, "frames": frame_paths(rgb, "DFDC/test", test_vid)}
        train = {"label": label,
                 "frames": frame_paths(rgb, "DFDC/train/dfdc_train_part_0", train_vid)}
        index[label] = {"train": {train_vid: train}, "test": {test_vid: test},
                        "val": {"label": label, "frames": test["frames"], train_vid: train}}
    return write_json(dfb, "DFDC", index)


def make_celebdf(dfb: Path) -> Path:
    """Celeb-DF-v2.json as rearrange.py writes it: every video under train, the official test
    list under test and again under val."""
    rgb = dfb / "datasets" / "rgb"
    videos = {("CelebDFv2_real", "Celeb-real", "id0_0000"): True,
              ("CelebDFv2_real", "YouTube-real", "00001"): False,
              ("CelebDFv2_fake", "Celeb-synthesis", "id0_id1_0000"): True,
              ("CelebDFv2_fake", "Celeb-synthesis", "id1_id0_0001"): False}
    index = {label: {"train": {}, "val": {}, "test": {}} for label in
             ("CelebDFv2_real", "CelebDFv2_fake")}
    for (label, folder, video), listed in videos.items():
        entry = {"label": label, "frames": frame_paths(rgb, f"Celeb-DF-v2/{folder}", video)}
        index[label]["train"][video] = entry
        if listed:
            index[label]["test"][video] = index[label]["val"][video] = entry
    return write_json(dfb, "Celeb-DF-v2", index)


def make_ffpp(dfb: Path) -> Path:
    """FaceForensics++.json: FF-real and two methods' labels, one level per compression."""
    rgb = dfb / "datasets" / "rgb"
    index = {}
    for label, folder, videos in (
            ("FF-real", "original_sequences/youtube", ("071", "054", "000", "003")),
            ("FF-DF", "manipulated_sequences/Deepfakes", ("071_054", "000_003")),
            ("FF-FS", "manipulated_sequences/FaceSwap", ("071_054", "000_003"))):
        index[label] = {"train": {"c23": {}}, "val": {"c23": {}}, "test": {"c23": {}}}
        for video in videos:
            split = "train" if video.startswith(("071", "054")) else "test"
            index[label][split]["c23"][video] = {
                "label": label, "frames": frame_paths(rgb, f"FaceForensics++/{folder}/c23",
                                                      video, n=1)}
    return write_json(dfb, "FaceForensics++", index)


def cfg(data: str, test=()) -> SimpleNamespace:
    return SimpleNamespace(data=data, test=list(test), quality="c23", img_size=64)


def table(videos) -> dict[str, tuple[int, str]]:
    return {f"{v.split}:{v.key}": v.label for v in videos}


# --- issue 14, item 11: DFDC.json with non-video keys under val -----------------------------------


def test_dfdc_json_with_label_and_frames_beside_the_videos(tmp_path):
    path = make_dfdc(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 4 keys that are not videos") as caught:
        name, videos = FR.open_faces(f"deepfakebench:{path},root={tmp_path}/datasets/rgb")
    assert len([w for w in caught if "not videos" in str(w.message)]) == 1  # warned once
    assert "DFDC_Real/val/label" in str(caught[0].message)
    assert name == "DFDC"
    assert table(videos) == {
        "train:DFDC/DFDC_Real/train0": 0, "test:DFDC/DFDC_Real/test0": 0,
        "val:DFDC/DFDC_Real/train0": 0, "train:DFDC/DFDC_Fake/train1": 1,
        "test:DFDC/DFDC_Fake/test1": 1, "val:DFDC/DFDC_Fake/train1": 1}
    assert all(len(v.frames) == 2 and v.landmarks is not None for v in videos)
    with pytest.warns(UserWarning, match="not videos"):
        bench = load_benchmark(cfg(f"deepfakebench:{path},root={tmp_path}/datasets/rgb"))
    assert (len(bench.train_real), len(bench.train_fake), len(bench.test)) == (2, 2, 4)


# --- item 12: root= for frame paths relative to datasets/rgb ------------------------------------


def readme_spec() -> str:
    """The DeepfakeBench spec of README.md's real-data section."""
    specs = re.findall(r"`(deepfakebench:[^`]+)`", README.read_text())
    assert len(specs) == 1, specs
    return specs[0]


def test_readme_deepfakebench_spec_runs(tmp_path):
    spec = readme_spec()
    assert "/path/to/DeepfakeBench/" in spec
    make_celebdf(tmp_path)
    here = spec.replace("/path/to/DeepfakeBench", str(tmp_path))
    with pytest.warns(UserWarning, match="in both its train and test"):
        name, videos = FR.open_faces(here)
    assert name == "Celeb-DF-v2" and len(videos) == 8
    assert videos[0].frames[0] == (tmp_path / "datasets" / "rgb" / "Celeb-DF-v2" / "Celeb-real"
                                   / "frames" / "id0_0000" / "000.png")
    with pytest.warns(UserWarning, match="in both its train and test"):
        bench = load_benchmark(cfg(here, [here]))
    assert len(bench.targets["Celeb-DF-v2"]) == 4


def test_root_may_be_the_deepfakebench_repository(tmp_path):
    path = make_dfdc(tmp_path)
    with pytest.warns(UserWarning, match="not videos"):
        _, videos = FR.open_faces(f"deepfakebench:{path},root={tmp_path}")
    assert videos[0].frames[0].is_file()
    assert videos[0].frames[0].is_relative_to(tmp_path / "datasets" / "rgb")
    with pytest.raises(FileNotFoundError, match="datasets/rgb folder"):
        FR.open_faces(f"deepfakebench:{path},root={tmp_path / 'preprocessing'}")


# --- item 13: methods= with FF++ names on DeepfakeBench labels ----------------------------------


@pytest.mark.parametrize("methods, fakes", [
    ("Deepfakes", {"FF-DF"}), ("FF-DF", {"FF-DF"}), ("Deepfakes+FaceSwap", {"FF-DF", "FF-FS"}),
    ("FaceSwap+FF-DF", {"FF-DF", "FF-FS"})])
def test_ffpp_method_names_select_deepfakebench_labels(tmp_path, methods, fakes):
    path = make_ffpp(tmp_path)
    _, videos = FR.open_faces(f"deepfakebench:{path},root={tmp_path}/datasets/rgb,quality=c23,"
                              f"methods={methods}")
    assert {v.method for v in videos if v.label == 1} == fakes
    assert sum(v.label == 0 for v in videos) == 4  # the reals are all kept


def test_method_filter_that_matches_nothing_lists_the_methods(tmp_path):
    path = make_ffpp(tmp_path)
    spec = f"deepfakebench:{path},root={tmp_path}/datasets/rgb,quality=c23"
    listing = r"fake: FF-DF, FF-FS; real: FF-real"
    with pytest.raises(ValueError, match=rf"no method \['FaceShifter'\].*{listing}"):
        FR.open_faces(f"{spec},methods=FaceShifter")
    with pytest.raises(ValueError, match=rf"no method \['Deepfake'\].*{listing}"):
        FR.open_faces(f"{spec},methods=FaceSwap+Deepfake")
    with pytest.raises(ValueError, match=rf"leaves no fake videos.*{listing}"):
        FR.open_faces(f"{spec},methods=FF-real")
    _, videos = FR.open_faces(f"{spec},methods=FF-real+FF-FS")  # a named real: only those
    assert {v.method for v in videos} == {"FF-real", "FF-FS"}


def test_deepfakebench_labels_select_csdfd_methods(tmp_path):
    faces = make_faces(tmp_path / "ffpp", ffpp_videos())
    _, videos = FR.open_faces(f"ffpp:{faces},methods=FF-DF")
    assert {v.method for v in videos} == {"youtube", "Deepfakes"}


def test_target_without_fakes_in_its_test_split_is_an_error(tmp_path):
    """A test set that the filters leave with one class only would give an undefined AUC."""
    path = make_ffpp(tmp_path)
    index = json.loads(path.read_text())
    for label in ("FF-DF", "FF-FS"):  # fakes only in train
        index["FaceForensics++"][label]["test"]["c23"] = {}
    path.write_text(json.dumps(index))
    spec = f"deepfakebench:{path},root={tmp_path}/datasets/rgb,quality=c23"
    celeb = make_celebdf(tmp_path / "celeb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"--test .*no fake videos in its test split "
                                             r"\(methods there: fake: none; real: FF-real\)"):
            load_benchmark(cfg(f"deepfakebench:{celeb},root={tmp_path}/celeb/datasets/rgb",
                                     [spec]))


# --- item 14: videos in both train and test ------------------------------------------------------


def test_train_test_overlap_is_warned_and_kept_out_of_training(tmp_path):
    path = make_celebdf(tmp_path)
    spec = f"deepfakebench:{path},root={tmp_path}/datasets/rgb"
    with pytest.warns(UserWarning, match=r"2 videos are in both its train and test splits"):
        _, videos = FR.open_faces(spec)
    assert FR.split_overlap(videos) == {"Celeb-DF-v2/CelebDFv2_real/id0_0000",
                                        "Celeb-DF-v2/CelebDFv2_fake/id0_id1_0000"}
    with pytest.warns(UserWarning, match="in both its train and test"):
        bench = load_benchmark(cfg(spec))
    # 2 frames per video: one train-only real and one train-only fake are left for training
    assert (len(bench.train_real), len(bench.train_fake), len(bench.test)) == (2, 2, 4)
    train = {bench.train_real.keys[0], bench.train_fake.keys[0]}
    assert train == {"Celeb-DF-v2/CelebDFv2_real/00001", "Celeb-DF-v2/CelebDFv2_fake/id1_id0_0001"}
    assert not train & set(bench.test.keys)
