"""Checkpoints: atomic replacement, weights_only loading, model loading for inference."""

from __future__ import annotations

import os

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


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pt"):
        checkpoint.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a csdfd checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "other.pt")


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
