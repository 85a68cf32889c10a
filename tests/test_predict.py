"""``python -m csdfd.predict`` (csdfd/predict.py, scan.py, predictions.py) on images and videos
made from real photos, with a tiny detector trained on the synthetic benchmark.

Tests that detect faces skip with a reason where dlib is not installed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from demo import demo_run
from realfaces import BOXES, photo, write_face_video, write_plain_video
from test_faces import centre, two_faces

from csdfd import predict as PR
from csdfd import predictions, scan

RECORD_KEYS = {"path", "kind", "status", "score", "error", "frames"}


def rgb_write(path: Path, rgb: np.ndarray, *params) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return demo_run(tmp_path_factory) / "best.pt"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("dlib", reason="dlib is not installed: pip install 'csdfd[data]'")
    root = tmp_path_factory.mktemp("media")
    out = {"astronaut": rgb_write(root / "astronaut.png", photo("astronaut")),
           "two": rgb_write(root / "two.jpg", two_faces(), cv2.IMWRITE_JPEG_QUALITY, 95),
           "video": root / "grace.mp4", "faceless": root / "faceless.mp4"}
    write_face_video(out["video"], "grace_hopper", n=16)
    write_plain_video(out["faceless"], n=10)
    return out


def predict(ckpt: Path, inputs, tmp_path: Path, *extra: str, code: int = 0) -> list[dict]:
    out = tmp_path / "out.json"
    got = PR.main([str(ckpt), *map(str, inputs), "--json", str(out), "--frames", "6",
                   "--workers", "0", "--quiet", *extra])
    assert got == code
    return json.loads(out.read_text())


def test_images_and_videos_from_real_photos(ckpt, media, tmp_path, capsys):
    records = predict(ckpt, [media["astronaut"], media["video"], media["faceless"]], tmp_path,
                      "--csv", str(tmp_path / "frames.csv"))
    assert all(set(r) == RECORD_KEYS for r in records)
    image, video, faceless = records
    assert (image["kind"], image["status"], image["error"]) == ("image", "ok", None)
    (frame,) = image["frames"]
    assert frame["index"] == 0 and frame["time_s"] is None and len(frame["faces"]) == 1
    assert set(frame["faces"][0]) == {"box", "score"}
    np.testing.assert_allclose(frame["faces"][0]["box"], BOXES["astronaut"], atol=2)
    assert image["score"] == frame["score"] == frame["faces"][0]["score"]
    assert 0 < image["score"] < 1
    # the video: 6 of its 16 frames, evenly spaced; time_s from its 25 fps
    assert video["kind"] == "video" and video["status"] == "ok"
    assert [f["index"] for f in video["frames"]] == [0, 3, 6, 9, 12, 15]
    assert [f["time_s"] for f in video["frames"]] == [0.0, 0.12, 0.24, 0.36, 0.48, 0.6]
    assert all(len(f["faces"]) == 1 for f in video["frames"])
    assert video["score"] == pytest.approx(np.mean([f["score"] for f in video["frames"]]))
    assert faceless["status"] == "no_face" and faceless["score"] is None
    assert len(faceless["frames"]) == 6 and all(f["faces"] == [] for f in faceless["frames"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["path", "verdict", "P(fake)", "faces", "frames"]
    assert table[1].split()[1:] == [predictions.verdict(image, 0.5), f"{image['score']:.3f}",
                                    "1", "1/1"]
    assert table[3].split()[1:] == ["no", "face", "-", "0", "0/6"]
    rows = list(csv.DictReader((tmp_path / "frames.csv").open()))
    assert list(rows[0]) == list(predictions.CSV_COLUMNS) and len(rows) == 1 + 6 + 6
    assert float(rows[0]["score"]) == pytest.approx(image["score"], abs=1e-6)
    assert rows[-1]["faces"] == "0" and rows[-1]["score"] == ""


def test_two_faces_in_one_frame(ckpt, media, tmp_path):
    by_mode = {m: predict(ckpt, [media["two"]], tmp_path, "--faces", m)[0]["frames"][0]
               for m in PR.FACES}
    faces = by_mode["max"]["faces"]
    assert len(faces) == 2 and by_mode["all"]["faces"] == faces
    # largest first: Grace Hopper (right half) before the astronaut
    assert centre(faces[0]["box"])[0] > 512 > centre(faces[1]["box"])[0]
    scores = [f["score"] for f in faces]
    assert by_mode["max"]["score"] == max(scores)
    assert by_mode["all"]["score"] == pytest.approx(np.mean(scores))
    assert len(by_mode["largest"]["faces"]) == 1
    assert by_mode["largest"]["score"] == pytest.approx(scores[0], abs=1e-6)


def test_video_score_aggregation_is_configurable(ckpt, media, tmp_path):
    for mode, fn in PR.VIDEO_SCORES.items():
        (r,) = predict(ckpt, [media["video"]], tmp_path, "--video-score", mode)
        assert r["score"] == pytest.approx(float(fn([f["score"] for f in r["frames"]])))


def test_amp_scores_are_close(ckpt, media, tmp_path):
    (full,) = predict(ckpt, [media["two"]], tmp_path)
    (amp,) = predict(ckpt, [media["two"]], tmp_path, "--amp", "--batch-size", "1")
    assert amp["score"] == pytest.approx(full["score"], abs=2e-2)
    assert len(amp["frames"][0]["faces"]) == 2


def exif_rotated(path: Path, rgb: np.ndarray) -> Path:
    """A JPEG holding the photo turned 90 degrees, with the EXIF tag that turns it back."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(np.rot90(rgb)))  # stored turned left
    exif = img.getexif()
    exif[0x0112] = 6  # orientation 6: display turned 90 degrees clockwise
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_image_formats(ckpt, tmp_path):
    rgb = photo("astronaut")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    files = {
        "rgba.png": tmp_path / "rgba.png",
        "grey.png": tmp_path / "grey.png",
        "deep.png": tmp_path / "deep.png",
        "exif.jpg": exif_rotated(tmp_path / "exif.jpg", rgb),
        "photo.webp": rgb_write(tmp_path / "photo.webp", rgb, cv2.IMWRITE_WEBP_QUALITY, 101),
        "photo.bmp": rgb_write(tmp_path / "photo.bmp", rgb),
        "plain.png": rgb_write(tmp_path / "plain.png", rgb)}
    assert cv2.imwrite(str(files["grey.png"]), grey)
    alpha = np.full(rgb.shape[:2], 200, np.uint8)
    assert cv2.imwrite(str(files["rgba.png"]), cv2.cvtColor(np.dstack([rgb, alpha]),
                                                            cv2.COLOR_RGBA2BGRA))
    assert cv2.imwrite(str(files["deep.png"]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                       .astype(np.uint16) * 257)
    # RGBA is stored as 4 channels, the 16-bit PNG as 16 bits
    assert cv2.imread(str(files["rgba.png"]), cv2.IMREAD_UNCHANGED).shape[2] == 4
    assert cv2.imread(str(files["deep.png"]), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    records = {Path(r["path"]).name: r for r in predict(ckpt, files.values(), tmp_path)}
    for name, r in records.items():
        assert r["status"] == "ok", name
        # the largest face is hers, upright; JPEG noise adds a weak second "face" (her badge)
        faces = r["frames"][0]["faces"]
        assert len(faces) == 1 + (name == "exif.jpg"), name
        np.testing.assert_allclose(centre(faces[0]["box"]), centre(BOXES["astronaut"]), atol=4,
                                   err_msg=name)
    plain = records["plain.png"]["score"]
    for lossless in ("rgba.png", "deep.png", "photo.webp", "photo.bmp"):
        assert records[lossless]["score"] == pytest.approx(plain, abs=1e-6), lossless


def write_avi(path: Path, name: str, n: int = 10) -> None:
    """An MJPG AVI of the photo (each frame a whole JPEG, so that half the file decodes)."""
    frame = cv2.resize(photo(name), (320, 320))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 320))
    for t in range(n):
        writer.write(cv2.cvtColor(np.roll(frame, 3 * t, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()


def test_bad_inputs_are_named_and_the_run_goes_on(ckpt, media, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.mp4").write_text("not a video, just notes\n" * 40)
    (bad / "cut.mp4").write_bytes(media["video"].read_bytes()[:4000])
    (bad / "cut.png").write_bytes(media["astronaut"].read_bytes()[:3000])
    (bad / "report.txt").write_text("text\n")
    (bad / "blob.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "locked.png").write_bytes(media["astronaut"].read_bytes())
    write_avi(bad / "short.avi", "grace_hopper")
    (bad / "short.avi").write_bytes((bad / "short.avi").read_bytes()[:-30000])
    locked = str(bad / "locked.png")
    real_fromfile, real_access = np.fromfile, os.access

    def fromfile(path, *a, **kw):  # what reading a chmod 000 file does (but not as root)
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_fromfile(path, *a, **kw)

    monkeypatch.setattr(np, "fromfile", fromfile)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != locked
                        and real_access(p, mode, **kw))
    files = sorted(p for p in bad.iterdir() if p.suffix not in (".txt", ".bin"))
    records = predict(ckpt, [*files, bad / "report.txt", bad / "blob.bin", bad / "gone.jpg",
                             media["astronaut"]], tmp_path, code=1)
    got = {Path(r["path"]).name: (r["status"], r["error"]) for r in records}
    assert got == {
        "cut.mp4": ("error", "not decodable: no frame could be decoded (damaged file or "
                    "unsupported codec)"),
        "cut.png": ("error", "not decodable: no frame could be decoded (damaged file or "
                    "unsupported codec)"),
        "empty.mp4": ("error", "not decodable: the file is empty"),
        "locked.png": ("error", "permission denied"),
        "notes.mp4": ("error", "not decodable: the file holds text, not an image or video"),
        "short.avi": ("ok", None),
        "report.txt": ("error", "not decodable: the file holds text, not an image or video"),
        "blob.bin": ("error", "not an image or video: OpenCV decodes nothing in this .bin "
                     "file"),
        "gone.jpg": ("error", "file missing"),
        "astronaut.png": ("ok", None)}
    assert all(r["score"] is None and r["frames"] == [] for r in records
               if r["status"] == "error")
    err = capsys.readouterr().err
    for name, (status, message) in got.items():
        if status == "error":
            assert f"csdfd.predict: error: {bad / name}: {message}" in err
    assert "short.avi: decoded 5 of the 6 frames expected from its header" in err
    assert len(records[-5]["frames"]) == 5  # short.avi: the frames before the cut are scored
    # a folder: its media only, recursively (report.txt, blob.bin, hidden files left out)
    (bad / ".hidden.png").write_bytes(b"")
    assert [i.path.name for i in scan.collect([str(bad)])] == [p.name for p in files]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; the case is covered "
                    "through os.access and np.fromfile in test_bad_inputs_are_named")
def test_chmod_000_image_is_permission_denied(ckpt, media, tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(media["astronaut"].read_bytes())
    path.chmod(0)
    try:
        (r,) = predict(ckpt, [path], tmp_path, code=1)
    finally:
        path.chmod(0o644)
    assert (r["status"], r["error"]) == ("error", "permission denied")


def test_not_a_checkpoint(media, tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, messages in ((text, ("cannot be read", "not a csdfd checkpoint")),
                           (foreign, ("not a csdfd checkpoint",)),
                           (tmp_path / "none.pt", ("does not exist",))):
        assert PR.main([str(path), str(media["astronaut"]), "--workers", "0", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and any(m in err for m in messages), err


def test_stdin_lists_paths(ckpt, media, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{media['astronaut']}\n\n{media['two']}\n"))
    records = predict(ckpt, ["-", media["faceless"]], tmp_path)
    assert [Path(r["path"]).name for r in records] == ["astronaut.png", "two.jpg",
                                                        "faceless.mp4"]


def test_workers_split_videos_and_agree(ckpt, media, tmp_path):
    assert [(t.part, t.parts) for t in scan.plan([scan.Input(media["video"], "video")], 8, 2)] \
        == [(0, 2), (1, 2)]
    inputs = [media["video"], media["two"]]
    one = predict(ckpt, inputs, tmp_path, "--frames", "8")
    out = tmp_path / "w2.json"
    assert PR.main([str(ckpt), *map(str, inputs), "--json", str(out), "--frames", "8",
                    "--workers", "2", "--quiet"]) == 0
    two = json.loads(out.read_text())
    assert [f["index"] for f in two[0]["frames"]] == [0, 2, 4, 6, 9, 11, 13, 15]
    for a, b in zip(one, two, strict=True):
        assert [f["index"] for f in a["frames"]] == [f["index"] for f in b["frames"]]
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def test_gradcam_pngs_and_annotated_video(ckpt, media, tmp_path, capsys):
    cams, video = tmp_path / "cams", tmp_path / "scored.mp4"
    records = predict(ckpt, [media["two"], media["video"]], tmp_path, "--cam", str(cams),
                      "--cam-frames", "2", "--annotate", str(video))
    top = sorted(records[1]["frames"], key=lambda f: -f["score"])[:2]
    assert sorted(p.name for p in cams.iterdir()) == sorted(
        ["two.cam.png"] + [f"grace.frame{f['index']:06d}.cam.png" for f in top])
    two = cv2.imread(str(cams / "two.cam.png"))
    assert two.shape == (28 + 2 * (24 + 192), 384, 3)  # title, then two faces
    cap = cv2.VideoCapture(str(video))
    assert (cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == (16, 320)
    cap.release()
    # --annotate OUT.mp4 names one video: with two, the run stops before any work
    assert PR.main([str(ckpt), str(media["video"]), str(media["faceless"]), "--annotate",
                    str(tmp_path / "x.mp4"), "--workers", "0", "--quiet"]) == 2
    assert "names one video, but 2 videos are given" in capsys.readouterr().err
    folder = tmp_path / "annotated"
    predict(ckpt, [media["video"], media["faceless"]], tmp_path, "--annotate", str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["faceless.annotated.mp4",
                                                        "grace.annotated.mp4"]


def test_plan_and_table_without_dlib(tmp_path):
    videos = [scan.Input(Path(f"{k}.mp4"), "video") for k in range(3)]
    assert [t.parts for t in scan.plan(videos, 32, 8)] == [3] * 9
    assert [t.parts for t in scan.plan(videos, 32, 2)] == [1, 1, 1]
    assert [t.parts for t in scan.plan(videos[:1], 4, 8)] == [1]  # too few frames to split
    assert sum(scan.planned(t) for t in scan.plan(videos[:1], 30, 4)) == 30
    assert scan.planned(scan.plan([scan.Input(Path("a.png"), "image")], 30, 4)[0]) == 1
    assert PR.frame_score([], "max") is None
    assert PR.frame_score([0.2, 0.9], "largest") == 0.2
    assert predictions.unique_stems([scan.Input(Path("a/x.jpg"), "image"),
                                     scan.Input(Path("b/x.jpg"), "image")]) == ["x", "x-2"]


def sharpened(ckpt: Path, faces: list[np.ndarray], out: Path, gain: float = 300.0) -> Path:
    """The checkpoint with its logit scaled by ``gain`` and re-centred on ``faces`` (frames),
    so that a pixel of difference in a crop moves the score well beyond 1e-5."""
    from csdfd.checkpoint import load_checkpoint, load_model, save_checkpoint
    from csdfd.data import faces as F
    from csdfd.inference import to_input
    from csdfd.models import normalisation

    model, cfg = load_model(ckpt)
    ex = F.FaceExtractor()
    crops = [F.input_crop(f.crop, f.landmarks, F.input_config(cfg.img_size))
             for f in map(ex, faces)]
    with torch.no_grad():
        logits = model(to_input(np.stack(crops), *normalisation(model), torch.device("cpu")))
    state = load_checkpoint(ckpt)
    w, b = state["model"]["classifier.weight"], state["model"]["classifier.bias"]
    state["model"]["classifier.weight"] = w * gain
    state["model"]["classifier.bias"] = (b - logits.mean()) * gain
    save_checkpoint(state, out)
    return out


def test_scores_equal_preprocess_then_evaluate(ckpt, tmp_path):
    """The same frames, crops and model: predict's frame scores are those of csdfd.preprocess
    + csdfd.evaluate --save-scores on the same videos (one pipeline, csdfd.data.faces)."""
    from csdfd import evaluate as E
    from csdfd import preprocess as P
    from csdfd.data.faces import read_frames

    pytest.importorskip("dlib", reason="dlib is not installed: pip install 'csdfd[data]'")
    ds = tmp_path / "ds"
    videos = {"real": ds / "real" / "astronaut.mp4", "fake": ds / "fake" / "grace.mp4"}
    for path in videos.values():
        path.parent.mkdir(parents=True)
        write_face_video(path, path.stem.replace("grace", "grace_hopper"), n=14)
    frames = [f for v in videos.values() for f in read_frames(v, 2).frames]
    ckpt = sharpened(ckpt, frames, tmp_path / "sharp.pt")
    faces, ev = tmp_path / "faces", tmp_path / "eval"
    assert P.main([f"folder:{ds}", "--out", str(faces), "--frames", "5", "--workers", "1"]) == 0
    assert E.main([str(ckpt), "--test", f"folder:{faces}", "--out", str(ev), "--workers", "0",
                   "--quiet", "--save-scores"]) == 0
    want = {(r["video"], int(r["frame"])): float(r["score"])
            for r in csv.DictReader((ev / "frames-folder.csv").open())}
    want_video = {r["video"]: float(r["score"])
                  for r in csv.DictReader((ev / "scores-folder.csv").open())}
    records = predict(ckpt, videos.values(), tmp_path, "--frames", "5", "--faces", "largest")
    key = {r["path"]: f"folder/{Path(r['path']).parent.name}/{Path(r['path']).stem}"
           for r in records}
    got = {(key[r["path"]], f["index"]): f["score"] for r in records for f in r["frames"]
           if f["score"] is not None}
    assert sorted(got) == sorted(want) and len(got) >= 8
    assert np.ptp(list(want.values())) > 0.05  # the scores move with the crops
    np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(got)],
                               atol=1e-5, rtol=0)
    for r in records:
        assert r["score"] == pytest.approx(want_video[key[r["path"]]], abs=1e-5)


def test_workers_do_not_import_torch():
    """A spawned worker imports csdfd.predict (its __main__), csdfd.scan and the face pipeline:
    none of them may pull in torch (seconds and hundreds of MB per worker)."""
    import subprocess
    import sys

    code = ("import sys, csdfd.predict, csdfd.predictions, csdfd.scan; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ,
                   "PYTHONPATH": str(Path(PR.__file__).parents[1])})


def test_inference_module_points_to_predict():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "csdfd.inference"], capture_output=True,
                          text=True, env={**os.environ,
                                          "PYTHONPATH": str(Path(PR.__file__).parents[1])})
    assert done.returncode == 1 and "python -m csdfd.predict CKPT INPUT" in done.stderr


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_commands_run(ckpt, media, tmp_path, monkeypatch, capsys):
    """The commands of README's "Use a trained detector", on the inputs it names, and the
    layout of its sample table (paths, faces and frames; the scores are the demo's)."""
    import shlex
    import shutil

    import matplotlib

    from csdfd import evaluate as E

    text = README.read_text()
    section = text[text.index("## Use a trained detector"):text.index("## Layout")]
    block = section.split("```bash\n")[1].split("```")[0]
    sample = section.split("\n```\npath")[1].split("```")[0]
    commands = [shlex.split(line) for line in block.splitlines()
                if line.startswith("python -m csdfd.")]
    assert [c[2] for c in commands] == ["csdfd.predict"] * 3 + ["csdfd.evaluate"]
    monkeypatch.chdir(tmp_path)
    Path("runs/demo").mkdir(parents=True)
    shutil.copy(ckpt, "runs/demo/best.pt")
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
                "photo.jpg")
    rgb_write(Path("group.png"), two_faces())
    write_face_video("clip.mp4", "astronaut", n=40)
    Path("videos").mkdir()
    shutil.copy("clip.mp4", "videos/a.mp4")
    for k, cmd in enumerate(commands):
        main = PR.main if cmd[2] == "csdfd.predict" else E.main
        assert main([*cmd[3:], "--workers", "0", "--quiet"]) == 0, cmd
        if k == 0:
            got = [line.split() for line in capsys.readouterr().out.splitlines()]
            want = [line.split() for line in ("path" + sample).splitlines()]
            assert [row[:1] + row[3:] for row in got] == [row[:1] + row[3:] for row in want]
    assert [r["status"] for r in json.loads(Path("predictions.json").read_text())] == ["ok"] * 3
    assert len(Path("frames.csv").read_text().splitlines()) == 1 + 32
    assert len(list(Path("cams").glob("a.frame*.cam.png"))) == 3
    assert Path("clip.scored.mp4").stat().st_size > 0
    assert Path("runs/demo/eval/eval.json").exists()
