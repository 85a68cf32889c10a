"""Checkpoints: atomic replacement, weights_only loading, model loading for inference."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from csdfd import checkpoint
from csdfd.config import resolve
from csdfd.models import build_model

TINY = {"backbone": "test_efficientnet", "img_size": 32, "proj_width": 16}


def _state(value: float) -> dict:
    return {"config": resolve(TINY).to_dict(), "model": {"w": torch.full((3,), value)}}


def test_save_then_load(tmp_path):
    path = checkpoint.save_checkpoint(_state(1.0), tmp_path / "sub" / "last.pt")
    state = checkpoint.load_checkpoint(path)
    assert state["format"] == checkpoint.FORMAT
    torch.testing.assert_close(state["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path / "sub") == ["last.pt"]  # no temporary file left


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = checkpoint.save_checkpoint(_state(1.0), tmp_path / "last.pt")
    before = path.read_bytes()

    def crash(obj, fh, *args, **kwargs):
        fh.write(b"partial bytes of a new checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(_state(2.0), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
    monkeypatch.undo()
    torch.testing.assert_close(checkpoint.load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_replace_is_atomic_rename(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(checkpoint.os, "replace",
                        lambda a, b: (calls.append((str(a), str(b))), real_replace(a, b)))
    path = checkpoint.save_checkpoint(_state(1.0), tmp_path / "best.pt")
    assert len(calls) == 1 and calls[0][1] == str(path)
    assert os.path.dirname(calls[0][0]) == str(tmp_path)  # same folder: a rename, not a copy


class Payload:
    """An arbitrary class: unpickling it would run code, so weights_only must refuse it."""


def test_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": {}, "x": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pt.*cannot be read"):
        checkpoint.load_checkpoint(path)


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not torch")


BAD_FILES = {
    "text.pt": lambda p: p.write_text("epochs: 3\nlr: 0.1\n"),
    "random.pt": lambda p: p.write_bytes(bytes(range(256)) * 3),
    "empty.pt": lambda p: p.write_bytes(b""),
    "tensor.pt": lambda p: torch.save(torch.zeros(3), p),
    "weights.pt": lambda p: torch.save({"state_dict": {"w": torch.zeros(1)}}, p),
    "archive.pt": _zip_of_text,
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_non_checkpoint_files_are_named_and_explained(tmp_path, name):
    path = tmp_path / name
    BAD_FILES[name](path)
    with pytest.raises(ValueError) as info:
        checkpoint.load_checkpoint(path)
    message = str(info.value)
    assert f"{name}' is not a csdfd checkpoint" in message
    assert "python -m csdfd.train" in message and "last.pt" in message  # what one is
    assert "pop from empty list" not in message and "weights_only` set to `False" not in message


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pt"):
        checkpoint.load_checkpoint(tmp_path / "none.pt")


def test_clis_explain_a_non_checkpoint(tmp_path, capsys):
    from csdfd import evaluate, train

    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    assert evaluate.main([str(path), "--test", "x:y", "--quiet"]) == 2
    assert "notes.txt' is not a csdfd checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        train.main(["--resume", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "notes.txt' is not a csdfd checkpoint" in err


def test_load_model_for_inference(tmp_path):
    cfg = resolve({**TINY, "proj_depth": 1})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = checkpoint.save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict()},
                                      tmp_path / "best.pt")
    loaded, loaded_cfg = checkpoint.load_model(path)
    assert loaded_cfg == cfg and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
