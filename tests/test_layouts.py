"""Dataset layouts (csdfd/data/layouts.py) on tiny trees built like the published datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from csdfd.data import ffpp_splits, layouts
from csdfd.data.layouts import LayoutError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def table(videos) -> dict[str, tuple[int, str]]:
    return {v.key: (v.label, v.split) for v in videos}


# --- FF++ ------------------------------------------------------------------------------------

# one official pair per split: (071, 054) train, (720, 672) val, (000, 003) test
REAL_IDS = ["071", "054", "720", "672", "000", "003"]
FAKE_IDS = ["071_054", "054_071", "720_672", "000_003", "003_000"]


def make_ffpp(root: Path, quality: str = "c23", methods=layouts.FFPP_METHODS) -> Path:
    touch(root, *(f"original_sequences/youtube/{quality}/videos/{i}.mp4" for i in REAL_IDS))
    for m in methods:
        touch(root, *(f"manipulated_sequences/{m}/{quality}/videos/{i}.mp4" for i in FAKE_IDS))
    return root


def test_shipped_ffpp_splits_are_the_official_partition():
    counts = {s: len(ffpp_splits.pairs(s)) for s in layouts.SPLITS}
    assert counts == {"train": 360, "val": 70, "test": 70}
    ids = [i for s in layouts.SPLITS for pair in ffpp_splits.pairs(s) for i in pair]
    assert sorted(ids) == [f"{i:03d}" for i in range(1000)]


@pytest.mark.parametrize("quality", layouts.QUALITIES)
def test_ffpp_labels_and_pair_splits(tmp_path, quality):
    videos = layouts.ffpp(make_ffpp(tmp_path, quality), quality=quality)
    t = table(videos)
    assert len(videos) == 6 + 5 * 5
    assert t["ffpp/youtube/071"] == (0, "train") and t["ffpp/youtube/672"] == (0, "val")
    assert t["ffpp/youtube/003"] == (0, "test")
    for m in layouts.FFPP_METHODS:  # a_b and b_a both follow their pair
        assert t[f"ffpp/{m}/071_054"] == t[f"ffpp/{m}/054_071"] == (1, "train")
        assert t[f"ffpp/{m}/000_003"] == t[f"ffpp/{m}/003_000"] == (1, "test")
        assert t[f"ffpp/{m}/720_672"] == (1, "val")
    assert {v.quality for v in videos} == {quality}
    assert len({v.key for v in videos}) == len(videos)  # 000_003 of each method kept apart


def test_ffpp_split_files_in_the_root_win(tmp_path):
    make_ffpp(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps([["000", "003"]]))
    (tmp_path / "val.json").write_text(json.dumps([["071", "054"]]))
    (tmp_path / "test.json").write_text(json.dumps([["720", "672"]]))
    t = table(layouts.ffpp(tmp_path, methods=("Deepfakes",)))
    assert t["ffpp/Deepfakes/003_000"] == (1, "train") and t["ffpp/youtube/054"] == (0, "val")
    assert t["ffpp/Deepfakes/720_672"] == (1, "test")


def test_ffpp_video_in_no_split_is_skipped_with_a_warning(tmp_path):
    make_ffpp(tmp_path, methods=("Deepfakes",))
    touch(tmp_path, "manipulated_sequences/Deepfakes/c23/videos/999_998.mp4")
    with pytest.warns(UserWarning, match="1 videos in no official split were skipped"):
        videos = layouts.ffpp(tmp_path, methods=("Deepfakes",))
    assert len(videos) == 11


def test_ffpp_splits_folder_and_missing_file(tmp_path):
    make_ffpp(tmp_path, methods=("FaceSwap",))
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.json").write_text(json.dumps(ffpp_splits.pairs("train")))
    with pytest.raises(LayoutError, match=r"FF\+\+ split file not found: .*splits/val\.json"):
        layouts.ffpp(tmp_path, methods=("FaceSwap",))


def test_ffpp_missing_folders_are_named(tmp_path):
    make_ffpp(tmp_path, methods=("Deepfakes", "FaceSwap"))
    with pytest.raises(LayoutError, match="manipulated_sequences/Face2Face/c23/videos") as err:
        layouts.ffpp(tmp_path, methods=layouts.FFPP_METHODS)
    # the hint names the real syntax (there is no --methods flag)
    assert f"ffpp:{tmp_path},methods=Deepfakes+FaceSwap" in str(err.value)
    assert "--methods" not in str(err.value)
    with pytest.raises(LayoutError, match="original_sequences/youtube/c40/videos"):
        layouts.ffpp(tmp_path, quality="c40", methods=("Deepfakes",))


def test_ffpp_reads_the_methods_present_by_default(tmp_path):
    """A standard 4-method download (no FaceShifter) works without methods=."""
    four = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
    make_ffpp(tmp_path, methods=four)
    assert layouts.ffpp_methods_present(tmp_path) == four
    videos = layouts.load("ffpp", tmp_path)
    assert {v.method for v in videos} == {"youtube", *four} and len(videos) == 6 + 4 * 5
    shutil.rmtree(tmp_path / "manipulated_sequences")
    with pytest.raises(LayoutError, match="no manipulated_sequences/METHOD/c23/videos folder"):
        layouts.ffpp(tmp_path)


def test_ffpp_bad_options(tmp_path):
    with pytest.raises(ValueError, match="quality must be one of"):
        layouts.ffpp(tmp_path, quality="hq")
    with pytest.raises(ValueError, match="unknown FF\\+\\+ methods \\['DeepFake'\\]"):
        layouts.ffpp(tmp_path, methods=("DeepFake",))


def test_ffpp_extracted_frames_folders(tmp_path):
    for i in REAL_IDS:
        touch(tmp_path, f"original_sequences/youtube/c23/images/{i}/0000.png")
    touch(tmp_path, *(f"manipulated_sequences/Deepfakes/c23/videos/{i}.mp4" for i in FAKE_IDS))
    videos = layouts.ffpp(tmp_path, methods=("Deepfakes",))
    assert sum(v.path.is_dir() for v in videos) == 6


# --- Celeb-DF v2 -----------------------------------------------------------------------------


def make_celebdf(root: Path) -> Path:
    touch(root, "Celeb-real/id0_0000.mp4", "Celeb-real/id1_0001.mp4", "YouTube-real/00000.mp4",
          "YouTube-real/00001.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
          "Celeb-synthesis/id1_id0_0001.mp4")
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id1_id0_0001.mp4\n")
    return root


def test_celebdf(tmp_path):
    t = table(layouts.celebdf(make_celebdf(tmp_path)))
    assert t == {
        "celebdf/Celeb-real/id0_0000": (0, "test"), "celebdf/Celeb-real/id1_0001": (0, "train"),
        "celebdf/YouTube-real/00000": (0, "train"), "celebdf/YouTube-real/00001": (0, "test"),
        "celebdf/Celeb-synthesis/id0_id1_0000": (1, "train"),
        "celebdf/Celeb-synthesis/id1_id0_0001": (1, "test"),
    }


def test_celebdf_errors(tmp_path):
    make_celebdf(tmp_path)
    listing = tmp_path / "List_of_testing_videos.txt"
    listing.write_text("0 Celeb-real/id0_0000.mp4\n")
    with pytest.raises(LayoutError, match="labels Celeb-real/id0_0000.mp4 as fake"):
        layouts.celebdf(tmp_path)
    listing.write_text("real Celeb-real/id0_0000.mp4\n")
    with pytest.raises(LayoutError, match="List_of_testing_videos.txt:1"):
        layouts.celebdf(tmp_path)
    listing.write_text("1 Celeb-real/id9_0009.mp4\n")
    with pytest.warns(UserWarning, match="1 videos that are not on disk"):
        layouts.celebdf(tmp_path)
    listing.unlink()
    with pytest.raises(LayoutError, match="Celeb-DF test list not found"):
        layouts.celebdf(tmp_path)
    make_celebdf(tmp_path)
    for p in (tmp_path / "YouTube-real").iterdir():
        p.unlink()
    (tmp_path / "YouTube-real").rmdir()
    with pytest.raises(LayoutError, match="Celeb-DF folder not found: .*YouTube-real"):
        layouts.celebdf(tmp_path)


# --- DFDC / DFDC preview -----------------------------------------------------------------------


def test_dfdc_parts(tmp_path):
    part = tmp_path / "dfdc_train_part_0"
    touch(part, "aaa.mp4", "bbb.mp4")
    (part / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "FAKE", "split": "train", "original": "bbb.mp4"},
        "bbb.mp4": {"label": "REAL", "split": "train"}}))
    touch(tmp_path, "test/videos/ccc.mp4", "test/videos/ddd.mp4")
    (tmp_path / "test" / "labels.csv").write_text("filename,label\nccc.mp4,1\nddd.mp4,0\n"
                                                  "eee.mp4,1\n")
    with pytest.warns(UserWarning, match="labels.csv lists 1 videos that are not on disk"):
        t = table(layouts.dfdc(tmp_path))
    assert t == {"dfdc/fake/aaa": (1, "train"), "dfdc/real/bbb": (0, "train"),
                 "dfdc/fake/ccc": (1, "test"), "dfdc/real/ddd": (0, "test")}


def test_dfdc_errors(tmp_path):
    with pytest.raises(LayoutError, match="no labels.csv or metadata.json"):
        layouts.dfdc(tmp_path)
    (tmp_path / "labels.csv").write_text("name,is_fake\nx.mp4,1\n")
    with pytest.raises(LayoutError, match="columns filename,label"):
        layouts.dfdc(tmp_path)
    (tmp_path / "labels.csv").unlink()
    (tmp_path / "metadata.json").write_text(json.dumps({"x.mp4": {"label": "maybe"}}))
    with pytest.raises(LayoutError, match="not REAL/FAKE"):
        layouts.dfdc(tmp_path)


def test_dfdcp(tmp_path):
    entries = {
        "method_A/1224068/1224068_A_001/1255229_1224068_A_001.mp4": {"label": "fake",
                                                                     "set": "train"},
        "method_B/1224068/1224068_B_002/3333_1224068_B_002.mp4": {"label": "fake",
                                                                  "set": "test"},
        "original_videos/1224068/1224068_A_001.mp4": {"label": "real", "set": "test"},
    }
    touch(tmp_path, *entries)
    (tmp_path / "dataset.json").write_text(json.dumps(entries))
    t = table(layouts.dfdcp(tmp_path))
    assert t == {
        "dfdcp/method_A/1224068/1224068_A_001/1255229_1224068_A_001": (1, "train"),
        "dfdcp/method_B/1224068/1224068_B_002/3333_1224068_B_002": (1, "test"),
        "dfdcp/original_videos/1224068/1224068_A_001": (0, "test"),
    }
    (tmp_path / "dataset.json").write_text(json.dumps({"a.mp4": {"label": "fake"}}))
    with pytest.raises(LayoutError, match="set train/test"):
        layouts.dfdcp(tmp_path)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(LayoutError, match="DFDC-preview dataset.json not found"):
        layouts.dfdcp(tmp_path)


# --- UADFV and generic folders -------------------------------------------------------------------


def test_uadfv(tmp_path):
    touch(tmp_path, "real/0000.mp4", "real/0001.mp4", "fake/0000_fake.mp4", "fake/0001_fake.mp4")
    t = table(layouts.uadfv(tmp_path))
    assert t == {"uadfv/real/0000": (0, "test"), "uadfv/real/0001": (0, "test"),
                 "uadfv/fake/0000_fake": (1, "test"), "uadfv/fake/0001_fake": (1, "test")}
    for p in (tmp_path / "fake").iterdir():
        p.unlink()
    (tmp_path / "fake").rmdir()
    with pytest.raises(LayoutError, match="uadfv fake/ folder not found"):
        layouts.uadfv(tmp_path)


def test_folder_of_images_frames_and_videos(tmp_path):
    touch(tmp_path, "real/a.jpg", "real/clip/0001.png", "real/clip/0002.png", "real/v.mp4",
          "real/notes.txt", "fake/b.png", "fake/w.avi", "fake/empty_dir/readme.md")
    videos = layouts.load("folder", tmp_path, name="mine")
    assert table(videos) == {"mine/real/a": (0, "test"), "mine/real/clip": (0, "test"),
                             "mine/real/v": (0, "test"), "mine/fake/b": (1, "test"),
                             "mine/fake/w": (1, "test")}


def test_folder_with_splits(tmp_path):
    touch(tmp_path, "train/real/a.png", "train/fake/b.png", "test/real/c.png", "test/fake/d.png")
    t = table(layouts.folder(tmp_path))
    assert t == {"folder/real/a": (0, "train"), "folder/fake/b": (1, "train"),
                 "folder/real/c": (0, "test"), "folder/fake/d": (1, "test")}


# --- specs ------------------------------------------------------------------------------------


def test_parse_spec_and_load(tmp_path):
    make_ffpp(tmp_path, "c40", methods=("Deepfakes", "FaceSwap"))
    name, path, opts = layouts.parse_spec(f"ffpp:{tmp_path},quality=c40,methods=Deepfakes+FaceSwap")
    assert (name, path, opts) == ("ffpp", tmp_path, {"quality": "c40",
                                                     "methods": "Deepfakes+FaceSwap"})
    videos = layouts.load(name, path, **opts)
    assert {v.method for v in videos} == {"youtube", "Deepfakes", "FaceSwap"}
    with pytest.raises(ValueError, match="must look like NAME:PATH"):
        layouts.parse_spec("ffpp")
    with pytest.raises(ValueError, match="must be key=value"):
        layouts.parse_spec("ffpp:/x,c23")
    with pytest.raises(ValueError, match="unknown dataset layout 'ff'"):
        layouts.load("ff", tmp_path)
    with pytest.raises(ValueError, match=r"takes the options .*'quality'.*but got \['qualty'\]"):
        layouts.load("ffpp", tmp_path, qualty="c40")
