"""The CPU side of ``csdfd.predict``: inputs found on the command line, and per input (or per
block of a video's frames) decoding and face detection in worker processes.

A worker runs the face pipeline of :mod:`csdfd.data.faces` exactly as ``csdfd.preprocess``
does (the same frames, detector, landmarks and 256-pixel crop), then makes each face's
model-input crop at the checkpoint's input size, and sends back the crops, boxes and timings;
the model runs in the main process.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from .data.faces import FaceExtractor, even_indices, input_config, input_crop, read_frames
from .data.faces import why_unreadable as _why
from .data.layouts import IMAGE_EXTS, VIDEO_EXTS

IMAGE, VIDEO = "image", "video"


@dataclass(frozen=True)
class Input:
    """One file to score."""

    path: Path
    kind: str  # image or video


@dataclass(frozen=True)
class Task:
    """Block ``part`` of ``parts`` of the sampled frames of input ``item``."""

    item: int
    path: Path
    kind: str
    frames: int
    part: int = 0
    parts: int = 1


def kind_of(path: Path) -> str:
    """image for the image extensions, video for anything else (OpenCV decides)."""
    return IMAGE if path.suffix.lower() in IMAGE_EXTS else VIDEO


def collect(args: Iterable[str], stdin=None) -> list[Input]:
    """Files named by ``args``: files as given, folders searched recursively for images and
    videos (hidden files skipped), ``-`` for paths read from ``stdin``, one per line. An
    empty folder is an error naming it."""
    out: list[Input] = []
    for arg in args:
        if arg == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            out += collect([line.strip() for line in lines if line.strip() and line != "-"])
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(s.startswith(".") for s in p.relative_to(path).parts)
                           and p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
            if not found:
                raise ValueError(f"{path}: no image ({', '.join(IMAGE_EXTS)}) or video "
                                 f"({', '.join(VIDEO_EXTS)}) file in this folder")
            out += [Input(p, kind_of(p)) for p in found]
        else:
            out.append(Input(path, kind_of(path)))
    return out


def plan(inputs: list[Input], frames: int, workers: int) -> list[Task]:
    """One task per input; with fewer videos than workers, each video's sampled frames are
    split into contiguous blocks so that all workers detect (each decodes up to its block)."""
    videos = sum(i.kind == VIDEO for i in inputs)
    split = 1 if videos == 0 or videos >= workers else math.ceil(workers / videos)
    parts = max(1, min(split, frames // 4))
    return [Task(k, i.path, i.kind, frames, p, parts if i.kind == VIDEO else 1)
            for k, i in enumerate(inputs) for p in range(parts if i.kind == VIDEO else 1)]


def planned(task: Task) -> int:
    """Frames a task decodes: one for an image; for a video with at least ``task.frames``
    frames, its block of them."""
    if task.kind == IMAGE:
        return 1
    return len(np.array_split(np.arange(task.frames), task.parts)[task.part])


def why_unreadable(path: Path) -> str:
    """:func:`csdfd.data.faces.why_unreadable`, saying "not an image or video" for a file
    whose name has no image or video extension."""
    cause = _why(path)
    if cause.startswith("not decodable: no frame") and \
            path.suffix.lower() not in IMAGE_EXTS + VIDEO_EXTS:
        return (f"not an image or video: OpenCV decodes nothing in this "
                f"{path.suffix or 'extension-less'} file")
    return cause


_extractor: FaceExtractor | None = None
_options: dict = {}


def extractor(options: dict) -> FaceExtractor:
    """This process's :class:`FaceExtractor` for ``options`` (made once: loading the landmark
    model takes a second)."""
    global _extractor, _options
    if _extractor is None or _options.get("extractor") != options["extractor"]:
        _extractor = FaceExtractor(**options["extractor"])
    _options = options
    return _extractor


def init_worker(options: dict) -> None:
    """Per worker process: one OpenCV thread, one dlib detector and shape predictor."""
    cv2.setNumThreads(1)
    extractor(options)


def scan(task: Task) -> dict:
    """Decode and detect one task (never raises): the frames with their faces' boxes,
    detector scores and model-input crops, the frame counts, timings, and the cause of a
    failure to read."""
    t0 = time.perf_counter()
    cause = None
    try:
        sample = read_frames(task.path, task.frames, task.part, task.parts)
    except OSError:  # an image that cannot be opened: missing, permission denied, ...
        sample, cause = None, why_unreadable(task.path)
    t1 = time.perf_counter()
    out = {"item": task.item, "part": task.part, "frames": [], "total": 0, "expected": 0,
           "cause": cause, "decode_s": t1 - t0, "detect_s": 0.0}
    if sample is None:
        return out
    crop_cfg = input_config(_options["img_size"])
    for index, frame in zip(sample.indices, sample.frames, strict=True):
        faces = _extractor.faces(frame, largest=_options["largest"])
        out["frames"].append({
            "index": index,
            "time_s": round(index / sample.fps, 3) if task.kind == VIDEO and sample.fps > 0
            else None,
            "faces": [{"box": [round(float(v), 1) for v in f.box], "detector": f.score,
                       "input": input_crop(f.crop, f.landmarks, crop_cfg)} for f in faces]})
    wanted = even_indices(sample.total, task.frames)
    out.update(total=sample.total, detect_s=time.perf_counter() - t1,
               expected=len(np.array_split(np.asarray(wanted), task.parts)[task.part])
               if wanted else 0)
    return out


def run_tasks(tasks: list[Task], options: dict, workers: int) -> Iterator[dict]:
    """:func:`scan` results as they finish: in ``workers`` spawned processes, or in this one
    for ``workers == 0``."""
    if workers == 0 or not tasks:
        extractor(options)
        yield from map(scan, tasks)
        return
    ctx = get_context("spawn")
    with ctx.Pool(min(workers, len(tasks)), init_worker, (options,)) as pool:
        yield from pool.imap_unordered(scan, tasks, chunksize=1)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
