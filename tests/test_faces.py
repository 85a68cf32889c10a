"""The face pipeline (csdfd/data/faces.py) as preprocess, evaluation and predict share it, and
the import order of csdfd/data (raw layouts -> face pipeline -> prepared frames -> benchmark)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from realfaces import BOXES, photo, write_face_video, write_plain_video

from csdfd.data import faces as F

DATA = Path(F.__file__).parent
#: csdfd/data modules in import order: each may import only modules before it (a module
#: listed here that does not exist is skipped; one that exists must be listed)
ORDER = ["base", "ffpp_splits", "layouts", "sbi_geometry", "sbi_parts", "sbi", "selfblend",
         "faces", "frames", "render", "forgeries", "synthetic", "benchmark", "stream"]


def _data_imports(path: Path) -> set[str]:
    """csdfd.data modules imported by ``path`` (anywhere in it, function bodies included);
    ``"__init__"`` for a name taken from the package itself."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:  # from . import x: a submodule, or a name of the package __init__
                out |= {a.name if (DATA / f"{a.name}.py").exists() else "__init__"
                        for a in node.names}
    return out


def test_data_modules_import_one_way():
    present = {p.stem for p in DATA.glob("*.py")} - {"__init__"}
    assert present <= set(ORDER), f"place {sorted(present - set(ORDER))} in ORDER"
    order = [m for m in ORDER if m in present]
    for i, name in enumerate(order):
        imported = _data_imports(DATA / f"{name}.py")
        later = imported - set(order[:i])
        assert not later, f"csdfd/data/{name}.py imports {sorted(later)}, which come after it"


def test_one_load_benchmark():
    root = DATA.parent
    defs = [(p.relative_to(root).as_posix(), n.name) for p in root.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef) and n.name == "load_benchmark"]
    assert defs == [("data/benchmark.py", "load_benchmark")]


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_frame_parts_add_up_to_the_whole(tmp_path, parts):
    video = tmp_path / "ramp.mp4"
    write_plain_video(video, n=23)
    whole = F.read_frames(video, 7)
    got = [F.read_frames(video, 7, k, parts) for k in range(parts)]
    assert sum((s.indices for s in got), []) == whole.indices
    for a, b in zip(sum((s.frames for s in got), []), whole.frames, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {s.total for s in got} == {23} and whole.fps == 25
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    assert [F.read_frames(image, 7, k, parts).indices for k in range(parts)] == \
        [[0]] + [[]] * (parts - 1)


def test_text_and_empty_files_are_named(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are my notes, not a video\n" * 20)
    assert F.read_frames(text, 4).total == 0
    assert F.why_unreadable(text) == "not decodable: the file holds text, not an image or video"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert F.why_unreadable(tmp_path / "empty.jpg") == "not decodable: the file is empty"
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(os.urandom(3000))
    assert F.why_unreadable(noise).startswith("not decodable: no frame could be decoded")


def two_faces() -> np.ndarray:
    """Astronaut (face about 90 px) beside Grace Hopper (about 215 px), one frame."""
    a, g = photo("astronaut"), photo("grace_hopper")
    h = max(a.shape[0], g.shape[0])
    pad = [np.pad(x, ((0, h - x.shape[0]), (0, 0), (0, 0))) for x in (a, g)]
    return np.ascontiguousarray(np.concatenate(pad, axis=1))


def centre(box) -> np.ndarray:
    return (np.asarray(box[:2], np.float32) + np.asarray(box[2:], np.float32)) / 2


@pytest.fixture(scope="module")
def extractor():
    pytest.importorskip("dlib", reason="dlib is not installed: pip install 'csdfd[data]'")
    return F.FaceExtractor()


def test_every_face_of_a_frame_largest_first(extractor):
    frame = two_faces()
    found = extractor.faces(frame)
    assert len(found) == 2
    offset = np.array([512, 0, 512, 0], np.float32)  # grace_hopper starts at x = 512
    # the 1024-px frame is detected at 640 px: box sides are as precise as that scale
    for face, want in zip(found, (np.add(BOXES["grace_hopper"], offset), BOXES["astronaut"]),
                          strict=True):
        np.testing.assert_allclose(centre(face.box), centre(want), atol=8)
    only = extractor.faces(frame, largest=True)
    assert len(only) == 1 and np.array_equal(only[0].crop, found[0].crop)
    assert np.array_equal(extractor(frame).crop, found[0].crop)  # what preprocess keeps
    assert all(f.crop.shape == (256, 256, 3) and f.landmarks.shape == (68, 2) for f in found)


def test_input_crop_is_what_evaluation_reads_back(extractor, tmp_path):
    """A crop stored as preprocess stores it (PNG + float32 landmarks) and read back by
    DiskFrames gives the model the same pixels as the crop made in memory."""
    from csdfd.data.frames import DiskFrames, FaceVideo

    video = tmp_path / "v.mp4"
    write_face_video(video, "astronaut", n=3)
    sample = F.read_frames(video, 3)
    face = extractor(sample.frames[1])
    cv2.imwrite(str(tmp_path / "000001.png"), cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR))
    np.save(tmp_path / "landmarks.npy", face.landmarks[None].astype(np.float32))
    disk = DiskFrames([FaceVideo("x/y/z", "y", 0, "test", [tmp_path / "000001.png"],
                                 tmp_path / "landmarks.npy")], cfg=F.input_config(48))
    want = F.input_crop(face.crop, face.landmarks, F.input_config(48))
    assert want.shape == (48, 48, 3)
    np.testing.assert_array_equal(disk.images([0])[0], want)
