"""Checkpoints: atomic writes, ``weights_only`` loading, and model loading for inference.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so that
``torch.load(weights_only=True)`` can read it without executing pickled code):

    {"format": 1, "config": {...}, "model": state_dict, "optimizer": ..., "scheduler": ...,
     "epoch": int, "step": int, "global_step": int, "rng": {"torch": ByteTensor, "cuda": [...]},
     "history": [...], "best": {...}, "nonfinite": {...}, "train_time_s": float,
     "window": {...}}   # the unread losses of the next metrics.jsonl row (runlog.Window)

``epoch``/``step`` point at the next training step to run, so a run can resume mid-epoch
(Ctrl-C) or at an epoch boundary and continue bit for bit (the data pipeline is a pure function
of seed, epoch and step; see csdfd.trainer).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .config import Config, resolve
from .models import Detector, build_model

FORMAT = 1


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, then renamed over ``path``; a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


#: What the "not a csdfd checkpoint" errors say a checkpoint is.
WHAT_IT_IS = ("a csdfd checkpoint is the last.pt or best.pt that `python -m csdfd.train` writes "
              "into its run folder (a torch.save file of a dict with 'config' and 'model')")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; errors name the file and the problem.

    A file that is no torch.save archive at all (text, other data, an empty or truncated copy)
    or one that holds something else (bare weights, a foreign training state) is "not a csdfd
    checkpoint", with what one is; a torch file that needs pickled code is refused unread.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive (torch >= 1.6)
        size = path.stat().st_size
        kind = "an empty file" if size == 0 else f"{size} bytes that are no torch.save archive"
        raise ValueError(f"{str(path)!r} is not a csdfd checkpoint: it is {kind} (text, other "
                         f"data, or a truncated copy); {WHAT_IT_IS}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only met a class it would have to import
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: it holds Python objects "
                         "that only running pickled code could rebuild, which csdfd never "
                         f"does (torch.load weights_only=True); {WHAT_IT_IS}") from exc
    except Exception as exc:  # noqa: BLE001 - another zip, corrupt members
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{str(path)!r} is not a csdfd checkpoint: torch cannot read it "
                         f"({first}); {WHAT_IT_IS}") from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        held = (f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict)
                else f"a {type(state).__name__}")
        raise ValueError(f"{str(path)!r} is not a csdfd checkpoint: the torch file holds {held}, "
                         f"without 'config' and 'model' entries; {WHAT_IT_IS}")
    return state


def config_of(state: dict) -> Config:
    """The Config stored in a checkpoint (fields added since it was written get defaults)."""
    known = {k: v for k, v in state["config"].items() if k in Config.__dataclass_fields__}
    return resolve({}, base={**Config().to_dict(), **known})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Detector, Config]:
    """A trained detector, in eval mode on ``device``, and its training config.

    The backbone is built from the stored config without downloading or reading the
    original ``--weights`` file: every weight comes from the checkpoint.
    """
    state = load_checkpoint(path)
    cfg = config_of(state)
    arch = Config(**{**cfg.to_dict(), "pretrained": False, "weights": None})
    model = build_model(arch)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
