"""What ``python -m csdfd.preprocess`` records and reports (csdfd/preprocess.py): unreadable and
truncated videos, failures across resumed runs and shards, the FF++ methods it reads.

Face detection is replaced by a stub that finds a face filling every frame: these tests check
the bookkeeping, and run without dlib (tests/test_preprocess.py runs dlib itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_layouts import make_ffpp

from csdfd import preprocess as P
from csdfd.data import faces as F
from csdfd.data.layouts import Video


class StubExtractor:
    """A face filling each frame, with 68 landmarks at the centre."""

    def __init__(self, landmarks=None, size=256, *args, **kwargs):
        self.size = size

    def __call__(self, frame: np.ndarray) -> F.Face:
        h, w = frame.shape[:2]
        return F.Face(cv2.resize(frame, (self.size, self.size)),
                      np.full((68, 2), self.size / 2, np.float32),
                      np.array([0, 0, w, h], np.float32), 1.0)


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(P, "FaceExtractor", StubExtractor)
    monkeypatch.setattr(P, "_extractor", StubExtractor(size=32))
    monkeypatch.setattr(P, "_options", {"frames": 8, "size": 32, "margin": 1.5, "threshold": 0.0,
                                        "detect_size": 640, "landmarks": "dlib-68",
                                        "landmarks_path": None})


def write_avi(path: Path, n: int = 8) -> bytes:
    """An MJPG AVI of ``n`` noise frames (each frame's JPEG is large, so that cutting the file
    in half keeps the header and drops the later frames); returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(n):
        writer.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    writer.release()
    return path.read_bytes()


def run(ds: Path, out: Path, *extra: str) -> dict:
    assert P.main([f"folder:{ds}", "--out", str(out), "--frames", "8", "--size", "32",
                   "--workers", "1", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def process(path: Path) -> dict:
    return P.process_video((Video("t", "real", path.stem, 0, "test", path), path.parent / "out"))


# --- issue 14, item 17: a truncated video --------------------------------------------------------


def test_truncated_video_is_kept_and_reported_incomplete(tmp_path, stub):
    write_avi(tmp_path / "real" / "whole.avi")
    data = write_avi(tmp_path / "fake" / "cut.avi")
    (tmp_path / "fake" / "cut.avi").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    report = run(tmp_path, out)
    cut = json.loads((out / "fake" / "cut" / "video.json").read_text())
    assert cut["status"] == "ok" and cut["total_frames"] == cut["frames_expected"] == 8
    decoded = cut["frames_decoded"]
    assert 0 < decoded < 8 and cut["frame_indices"] == list(range(decoded))  # its first part
    assert cut["incomplete"].startswith(f"decoded {decoded} of the 8 frames expected")
    whole = json.loads((out / "real" / "whole" / "video.json").read_text())
    assert whole["frames_decoded"] == whole["frames_expected"] == 8 and "incomplete" not in whole
    assert report["incomplete"] == [{
        "key": "folder/fake/cut", "source": str(tmp_path / "fake" / "cut.avi"), "status": "ok",
        "frames_decoded": decoded, "frames_expected": 8, "note": cut["incomplete"]}]
    assert report["incomplete_in_dataset"] == 1 and report["failed"] == 0
    index = json.loads((out / "index.json").read_text())
    entry = next(e for e in index["videos"] if e["key"] == "folder/fake/cut")
    assert (entry["frames_decoded"], entry["frames_expected"]) == (decoded, 8)


# --- item 16: failures listed after a resume ----------------------------------------------------


def make_failing(root: Path) -> None:
    write_avi(root / "real" / "good.avi")
    write_avi(root / "fake" / "good.avi")
    (root / "real" / "bad.mp4").write_bytes(os.urandom(4096))
    (root / "fake" / "empty.mp4").write_bytes(b"")


def test_report_after_resume_lists_every_failed_video(tmp_path, stub):
    make_failing(tmp_path / "ds")
    out = tmp_path / "out"
    first = run(tmp_path / "ds", out)
    assert first["failed"] == first["failed_in_dataset"] == 2
    again = run(tmp_path / "ds", out)
    assert again["processed"] == 0 and again["failed"] == 0
    assert again["failures"] == first["failures"] and again["failed_in_dataset"] == 2
    assert {f["key"] for f in again["failures"]} == {"folder/real/bad", "folder/fake/empty"}
    assert again["failures"][0]["source"].startswith(str(tmp_path / "ds"))


def test_report_of_the_last_shard_lists_the_failures_of_all(tmp_path, stub):
    make_failing(tmp_path / "ds")
    out = tmp_path / "out"
    run(tmp_path / "ds", out, "--shard", "0/2")
    last = run(tmp_path / "ds", out, "--shard", "1/2")
    assert last["processed"] == 2 and last["pending_in_index"] == 0
    assert {f["key"] for f in last["failures"]} == {"folder/real/bad", "folder/fake/empty"}


# --- item 18: the cause of an unreadable video ---------------------------------------------------


def test_unreadable_causes_are_named(tmp_path, stub, monkeypatch):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert process(tmp_path / "gone.mp4")["error"] == "unreadable: file missing"
    assert process(bad)["error"].startswith("unreadable: not decodable: no frame could be")
    empty = process(tmp_path / "empty.mp4")["error"]
    assert empty == "unreadable: not decodable: the file is empty"
    # permission: os.access is what decides (chmod 000 does not stop root, who runs some CIs)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != bad
                        and real_access(p, mode, **kw))
    assert process(bad)["error"] == "unreadable: permission denied"


def test_unreadable_image_of_a_frame_folder_is_named(tmp_path, stub, monkeypatch):
    def denied(path, n):
        raise PermissionError(13, "Permission denied", str(path / "0001.png"))

    monkeypatch.setattr(P, "read_frames", denied)
    (tmp_path / "clip").mkdir()
    record = process(tmp_path / "clip")
    assert record["status"] == "failed"
    assert record["error"] == f"unreadable: permission denied ({tmp_path / 'clip' / '0001.png'})"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; the case is covered "
                    "through os.access in test_unreadable_causes_are_named")
def test_chmod_000_video_is_permission_denied(tmp_path, stub):
    path = tmp_path / "locked.avi"
    write_avi(path)
    path.chmod(0)
    try:
        assert process(path)["error"] == "unreadable: permission denied"
    finally:
        path.chmod(0o644)


# --- item 15: FF++ without FaceShifter ----------------------------------------------------------


FOUR = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def test_ffpp_default_reads_the_methods_present(tmp_path, stub, capsys):
    root = make_ffpp(tmp_path / "ff", methods=FOUR)  # empty files: every video fails, fast
    assert P.main([f"ffpp:{root}", "--out", str(tmp_path / "out"), "--frames", "2",
                   "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert ("ffpp: methods Deepfakes+Face2Face+FaceSwap+NeuralTextures (the ones present; not "
            "found: FaceShifter") in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["processed"] == 6 + 4 * 5


def test_ffpp_named_missing_method_is_an_error_with_the_real_syntax(tmp_path, stub, capsys):
    root = make_ffpp(tmp_path / "ff", methods=FOUR)
    assert P.main([f"ffpp:{root},methods=Deepfakes+FaceShifter", "--out",
                   str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "FF++ FaceShifter c23 videos folder not found" in err
    assert f"ffpp:{root},methods=Deepfakes+Face2Face+FaceSwap+NeuralTextures" in err
    assert "--methods" not in err
