"""``python -m csdfd.predict CKPT INPUT...`` (or ``csdfd-predict``): is this image or video a
deepfake? Scores every face with a trained detector.

    python -m csdfd.predict runs/demo/best.pt photo.jpg clip.mp4 folder/ --json out.json
    find /data -name '*.mp4' | python -m csdfd.predict runs/ffpp/best.pt - --csv frames.csv
    python -m csdfd.predict runs/ffpp/best.pt clip.mp4 --cam cams/ --annotate clip.scored.mp4

INPUT: image files (jpg, png, webp, bmp, tif; RGBA, grey, 16-bit and EXIF-rotated included),
video files (anything OpenCV decodes), folders (searched recursively), or ``-`` to read paths
from stdin, one per line.

Each input goes through the face pipeline of ``csdfd.preprocess`` (csdfd.data.faces):
``--frames`` frames evenly spaced over a video (an image is one frame), every dlib face of a
frame with its 68 landmarks and 256-pixel crop, then evaluation's model-input crop at the
checkpoint's input size. Backbone, input size and normalisation come from the checkpoint.

Scores are P(fake), the sigmoid of the detector's logit:

- face: the model's score of its crop;
- frame (``--faces``): ``max`` (default) over its faces, since one forged face makes the frame
  fake whatever the others are; ``largest``: only the largest face, the one preprocess keeps
  (so the scores are those of csdfd.evaluate on preprocessed faces); ``all``: the mean over
  its faces;
- video (``--video-score``): ``mean`` (default) of its frame scores, the video-level rule of
  csdfd.evaluate; or ``median``, ``max``. Frames without a face have no score.

Output: a table on stdout (path, verdict at ``--threshold``, P(fake), faces scored, frames with
a face / frames decoded); ``--json OUT``: one record per input with ``path``, ``kind``
(image/video), ``status`` (ok, no_face: decoded but no face, error: not readable), ``score``
(null unless ok), ``error`` and ``frames`` (``index``, ``time_s``, ``faces`` [{box, score}],
``score``); ``--csv OUT``: one row per decoded frame. ``--cam DIR``: a Grad-CAM PNG per image
and per video for its ``--cam-frames`` highest-scoring frames (csdfd.visualize);
``--annotate OUT.mp4``: the video with boxes and scores (a folder for several videos).

Decoding and face detection run in ``--workers`` processes; the model runs batched across
inputs on ``--device`` (``--amp``: bfloat16 autocast). Exit status: 0; 1 if any input had
status error (the others are still scored and written); 2 for bad arguments or checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import predictions, scan
from .data import faces

FACES = ("max", "largest", "all")
VIDEO_SCORES = {"mean": np.mean, "median": np.median, "max": np.max}


def frame_score(face_scores: list[float], mode: str) -> float | None:
    """A frame's score from its faces' (largest first): see ``--faces``."""
    if not face_scores:
        return None
    if mode == "all":
        return float(np.mean(face_scores))
    return float(max(face_scores) if mode == "max" else face_scores[0])


def finish(state: dict, args: argparse.Namespace) -> dict:
    """The record of one input once all its parts are scored."""
    inp: scan.Input = state["input"]
    frames = sorted((f for part in state["parts"] for f in part["frames"]),
                    key=lambda f: f["index"])
    for f in frames:
        f["score"] = frame_score([face["score"] for face in f["faces"]], args.faces)
    scored = [f["score"] for f in frames if f["score"] is not None]
    record = {"path": str(inp.path), "kind": inp.kind, "status": "ok", "score": None,
              "error": None, "frames": frames}
    if not frames:
        causes = [p["cause"] for p in state["parts"] if p["cause"]]
        record.update(status="error", error=causes[0] if causes
                      else scan.why_unreadable(inp.path))
    elif not scored:
        record["status"] = "no_face"
    else:
        record["score"] = float(VIDEO_SCORES[args.video_score](scored))
    expected = sum(p["expected"] for p in state["parts"])
    if frames and len(frames) < expected:
        print(f"csdfd.predict: warning: {inp.path}: decoded {len(frames)} of the {expected} "
              "frames expected from its header: the file is truncated or damaged",
              file=sys.stderr)
    return record


def run(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Score every input; returns the records (input order) and timings."""
    import torch  # here, not above: the spawned workers import this module, and need no torch

    from .checkpoint import load_model
    from .inference import FaceScorer

    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_model(args.checkpoint, device)
    inputs = scan.collect(args.inputs)
    if not inputs:
        raise ValueError("no inputs: give image or video files, folders, or - for stdin")
    outputs = predictions.Outputs(args, inputs, model, cfg.img_size)  # checks --annotate first
    options = {"extractor": faces.extractor_options(args), "img_size": cfg.img_size,
               "largest": args.faces == "largest"}
    scan.extractor(options)  # dlib or the landmark model missing: fail here, once
    tasks = scan.plan(inputs, args.frames, max(args.workers, 1))
    states = [{"input": i, "parts": [], "pending": 0, "left": 0, "record": None}
              for i in inputs]  # per input: its scanned parts, faces to score, parts to come
    for t in tasks:
        states[t.item]["left"] += 1
    scorer = FaceScorer(model, args.batch_size, args.amp)
    start = time.perf_counter()
    stats = _score(tasks, options, states, scorer, outputs, args)
    stats.update(model_s=scorer.seconds, seconds=time.perf_counter() - start)
    return [st["record"] for st in states], stats


def _score(tasks: list[scan.Task], options: dict, states: list[dict], scorer,
           outputs: predictions.Outputs, args: argparse.Namespace) -> dict:
    """Scan results as they come, their faces to the scorer, each input's record (and its
    Grad-CAM / annotation) as soon as its last part and face are in; returns the timings."""
    stats = {"decode_s": 0.0, "detect_s": 0.0, "frames": 0}
    estimate = sum(scan.planned(t) for t in tasks)
    bar = tqdm(total=estimate, unit="frame", file=sys.stderr, dynamic_ncols=True,
               disable=args.quiet or estimate < 16)
    by_key = {(t.item, t.part): t for t in tasks}
    ready: set[int] = set()  # inputs with every part back, some faces maybe unscored

    def settle() -> None:
        for k in sorted(ready):
            if states[k]["pending"] == 0:
                ready.discard(k)
                states[k]["record"] = finish(states[k], args)
                outputs.item_done(states[k]["record"])

    try:
        for part in scan.run_tasks(tasks, options, args.workers):
            st = states[part["item"]]
            st["parts"].append(part)
            st["left"] -= 1
            if st["left"] == 0:
                ready.add(part["item"])
            for face in (face for f in part["frames"] for face in f["faces"]):
                scorer.add(face, st)
            for key in ("decode_s", "detect_s"):
                stats[key] += part[key]
            stats["frames"] += len(part["frames"])
            bar.total += len(part["frames"]) - scan.planned(by_key[part["item"], part["part"]])
            bar.update(len(part["frames"]))
            settle()
        scorer.flush()
        settle()
    finally:
        bar.close()
    return stats


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csdfd.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a csdfd training run")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders (recursive), or - (paths on stdin)")
    p.add_argument("--faces", choices=FACES, default="max",
                   help="frame score from its faces: max (default), largest, all (mean)")
    p.add_argument("--video-score", choices=sorted(VIDEO_SCORES), default="mean",
                   help="video score from its frame scores (default mean)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="P(fake) from which the verdict is fake (default 0.5)")
    p.add_argument("--json", type=Path, default=None, help="write one record per input")
    p.add_argument("--csv", type=Path, default=None, help="write one row per decoded frame")
    p.add_argument("--cam", type=Path, default=None, metavar="DIR",
                   help="write Grad-CAM PNGs (per image; per video its top frames)")
    p.add_argument("--cam-frames", type=int, default=3,
                   help="highest-scoring frames per video with a Grad-CAM PNG (default 3)")
    p.add_argument("--cam-layer", default=None,
                   help="backbone module for Grad-CAM (default: chosen from the model)")
    p.add_argument("--annotate", type=Path, default=None, metavar="OUT.mp4",
                   help="write the video with face boxes and scores (a folder: one per video)")
    p.add_argument("--batch-size", type=int, default=64, help="faces per model batch")
    p.add_argument("--workers", type=int, default=scan.default_workers(),
                   help="processes decoding and detecting (0: in this one; default: cores, "
                   "at most 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    faces.add_options(p, threshold_flag="--face-threshold")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for name in ("frames", "size", "batch_size", "cam_frames", "detect_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, but got "
                    f"{getattr(args, name)}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, but got {args.workers}")
    try:
        records, stats = run(args)
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        print(f"csdfd.predict: error: {exc}", file=sys.stderr)
        return 2
    predictions.report(records, args, stats)
    return 1 if any(r["status"] == "error" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
