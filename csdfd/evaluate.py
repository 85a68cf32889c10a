"""``python -m csdfd.evaluate``: a trained detector on one or more test sets (paper Table I).

    python -m csdfd.evaluate runs/ffpp/best.pt --data ffpp:/data/faces/ffpp \\
        --test celebdf:/data/faces/celebdf --test dfdc:/data/faces/dfdc --out runs/ffpp/eval

Per set: frame-level AUC (the paper's metric), AP, EER and accuracy at 0.5, and the same at
video level, where a video's score is the mean of its frame scores. Videos are keyed by
dataset/method/video id, so that two methods' ``000_003`` never merge. Sets are given as for
training (:mod:`csdfd.data.frames`: ``NAME:FACES`` from ``python -m csdfd.preprocess``, or
``deepfakebench:FILE.json``); their test split is used (``--split`` for another). ``--data``
marks the in-domain set; without ``--data`` / ``--test`` the sets of the checkpoint's training
config are used. A checkpoint trained on the embedded synthetic benchmark
(``python -m csdfd.evaluate runs/demo/best.pt``) has it re-rendered from its config (same seed
and sizes, so the same images) and is evaluated on its in-domain test set and every target
(frame level only: synthetic frames form no videos). The table is printed and written to
OUT/eval.md and OUT/eval.json; ``--save-scores`` adds OUT/scores-SET.csv (one line per video)
and OUT/frames-SET.csv (one line per frame). OUT is made only once every set is evaluated, so
a failed evaluation leaves nothing behind.

Memory stays bounded whatever the set size: frames are read by DataLoader workers batch by
batch and only one float per frame (its score) is kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .data.faces import input_config
from .data.frames import DiskFrames, open_faces
from .inference import to_input
from .metrics import METRICS, frame_metrics, mean_over
from .models import normalisation

IN_DOMAIN = "in-domain"


class _Items(torch.utils.data.Dataset):
    """Frame i -> (uint8 HWC image, i), for DataLoader workers."""

    def __init__(self, frames: DiskFrames):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.frames.images([i])[0]), i


@torch.no_grad()
def frame_scores(model: torch.nn.Module, frames: DiskFrames, batch_size: int = 64,
                 workers: int = 0, amp: bool = False, channels_last: bool = False,
                 progress: bool = False) -> np.ndarray:
    """P(fake) of every frame, streamed: [N] float32 in frame order."""
    device = next(model.parameters()).device
    mean, std = normalisation(model)
    scores = np.full(len(frames), np.nan, np.float32)
    loader = torch.utils.data.DataLoader(_Items(frames), batch_size=batch_size,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, unit="batch", leave=False, file=sys.stderr)
    model.eval()
    for images, idx in loader:
        x = to_input(images, mean, std, device, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        scores[idx.numpy()] = torch.sigmoid(logits.float().reshape(-1)).cpu().numpy()
    return scores


def video_scores(frames: DiskFrames, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(video labels, mean frame score per video), videos in ``frames.keys`` order."""
    n = len(frames.keys)
    counts = np.bincount(frames.video, minlength=n)
    sums = np.bincount(frames.video, weights=scores.astype(np.float64), minlength=n)
    labels = np.array([v.label for v in frames.videos], np.int64)
    return labels, sums / np.maximum(counts, 1)


def _methods(frames, scores: np.ndarray) -> dict[str, float]:
    """Frame AUC of all reals against each fake method (FF++'s per-method view; the forgery
    family of a synthetic frame)."""
    if isinstance(frames, DiskFrames):
        method = np.array([frames.videos[i].method for i in frames.video])
    elif getattr(frames, "kinds", None) is not None:
        method = np.asarray(frames.kinds)
    else:
        return {}
    fakes = sorted({m for m, y in zip(method, frames.labels, strict=True) if y == 1})
    if len(fakes) < 2:
        return {}
    real = frames.labels == 0
    return {m: frame_metrics(frames.labels[real | (method == m)],
                             scores[real | (method == m)])["auc"] for m in fakes}


def evaluate_set(model, frames, args) -> tuple[dict, np.ndarray]:
    """Metrics of one set (frame level; video level for :class:`DiskFrames`) and the frame
    scores."""
    scores = frame_scores(model, frames, args.batch_size, args.workers, args.amp,
                          args.channels_last, progress=not args.quiet)
    if isinstance(frames, DiskFrames):
        vlabels, vscores = video_scores(frames, scores)
        video, videos = frame_metrics(vlabels, vscores), len(frames.keys)
    else:
        video, videos = {m: math.nan for m in METRICS}, None
    result = {"frame": frame_metrics(frames.labels, scores), "video": video, "videos": videos,
              "frames": len(frames), "methods": _methods(frames, scores)}
    return result, scores


def table(results: dict[str, dict], targets: list[str]) -> str:
    """Markdown: one row per set (frame and video metrics), then the cross-domain mean."""
    cols = [f"frame {m}" for m in METRICS] + [f"video {m}" for m in METRICS]
    lines = ["| set | videos | frames | " + " | ".join(c.replace("auc", "AUC").replace(
        "ap", "AP").replace("eer", "EER") for c in cols) + " |", "|" + "---|" * (3 + len(cols))]

    def pct(x) -> str:
        return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"

    for name, r in results.items():
        cells = [pct(r[level][m]) for level in ("frame", "video") for m in METRICS]
        videos = "-" if r["videos"] is None else r["videos"]
        lines.append(f"| {name} | {videos} | {r['frames']} | " + " | ".join(cells) + " |")
    if targets:
        mean = {level: mean_over({t: results[t][level] for t in targets}, targets)
                for level in ("frame", "video")}
        cells = [pct(mean[level][m]) for level in ("frame", "video") for m in METRICS]
        lines.append("| cross-domain mean | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _real_sets(args: argparse.Namespace, cfg) -> list[tuple[str, bool, DiskFrames, str]]:
    """(label, is a target, frames, spec) of every --data / --test set (or the run's), all
    opened before any is evaluated, so that a bad spec fails first."""
    data = args.data if (args.data or args.test) else (None if cfg.data == "synthetic"
                                                         else cfg.data)
    tests = args.test or ([] if args.data else list(getattr(cfg, "test", []) or []))
    crop = input_config(cfg.img_size)
    sets: list[tuple[str, bool, DiskFrames, str]] = []
    for role, spec in ([(IN_DOMAIN, data)] if data else []) + [(None, t) for t in tests]:
        name, videos = open_faces(spec, args.quality or getattr(cfg, "quality", None))
        videos = [v for v in videos if v.split == args.split]
        if not videos:
            raise ValueError(f"{spec}: no videos in its {args.split} split")
        label = role or name
        if label in [s[0] for s in sets]:
            raise ValueError(f"{spec}: set {label!r} is given twice")
        sets.append((label, role is None, DiskFrames(videos, cfg=crop), spec))
    return sets


def _synthetic_sets(args: argparse.Namespace, cfg) -> list[tuple[str, bool, object, str]]:
    """The embedded benchmark of a synthetic run, re-rendered from its config: the in-domain
    test set and every cross-domain target."""
    from .data.synthetic import SyntheticSpec, make_benchmark

    if args.split != "test":
        raise ValueError(f"--split {args.split}: the synthetic benchmark is evaluated on its "
                         "test sets; --split is for real data")
    bench = make_benchmark(SyntheticSpec.from_config(cfg), verbose=not args.quiet)
    return [(IN_DOMAIN, False, bench.test, bench.name)] + [
        (name, True, frames, f"{bench.name}: {name}") for name, frames in bench.targets.items()]


def run(args: argparse.Namespace) -> dict:
    from .checkpoint import load_model

    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_model(args.checkpoint, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sets = _real_sets(args, cfg)
    if not sets and cfg.data == "synthetic":
        sets = _synthetic_sets(args, cfg)
    if not sets:
        raise ValueError("nothing to evaluate: give --test NAME:FACES (and/or --data)")
    results, targets, scored = {}, [], []
    for label, target, frames, spec in sets:
        print(f"{label}: " + (f"{len(frames.keys)} videos, " if isinstance(frames, DiskFrames)
                              else "") + f"{len(frames)} frames", file=sys.stderr)
        results[label], scores = evaluate_set(model, frames, args)
        results[label]["spec"] = spec
        if target:
            targets.append(label)
        scored.append((label, frames, scores))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed evaluation leaves no folder
    if args.save_scores:
        for label, frames, scores in scored:
            _write_scores(out, label, frames, scores)
    report = {"checkpoint": str(args.checkpoint), "split": args.split, "sets": results,
              "cross_domain_mean": {level: mean_over({t: results[t][level] for t in targets},
                                                     targets) for level in ("frame", "video")}}
    md = f"# {Path(args.checkpoint).name}: {args.split} split\n\n{table(results, targets)}\n"
    (out / "eval.md").write_text(md)
    (out / "eval.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    print(table(results, targets))
    print(f"written: {out / 'eval.md'}, {out / 'eval.json'}", file=sys.stderr)
    return report


def _finite(obj):
    """NaN (a metric undefined for a one-class set) -> null, so that the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _write_scores(out: Path, label: str, frames, scores: np.ndarray) -> None:
    """OUT/frames-SET.csv (video, frame, label, score per frame) and, for sets of videos,
    OUT/scores-SET.csv (video, label, frames, mean score per video)."""
    with (out / f"frames-{label}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame", "label", "score"])
        for i, (y, s) in enumerate(zip(frames.labels, scores, strict=True)):
            if isinstance(frames, DiskFrames):
                v = frames.videos[frames.video[i]]
                w.writerow([v.key, v.frames[frames.row[i]].stem, int(y), f"{s:.6f}"])
            else:
                w.writerow(["", i, int(y), f"{s:.6f}"])
    if not isinstance(frames, DiskFrames):
        return
    _, vscores = video_scores(frames, scores)
    with (out / f"scores-{label}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "frames", "score"])
        counts = np.bincount(frames.video, minlength=len(frames.keys))
        for key, v, n, s in zip(frames.keys, frames.videos, counts, vscores, strict=True):
            w.writerow([key, v.label, int(n), f"{s:.6f}"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csdfd.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a training run")
    p.add_argument("--data", default=None, help="in-domain set NAME:FACES (its test split)")
    p.add_argument("--test", action="append", default=[], metavar="NAME:FACES",
                   help="cross-domain set (repeatable)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--quality", default=None, help="FF++ compression (default: the run's)")
    p.add_argument("--out", default=None, help="output folder (default: CHECKPOINT_DIR/eval)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers reading frames")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--save-scores", action="store_true",
                   help="also write OUT/scores-SET.csv (one line per video) and "
                   "OUT/frames-SET.csv (one line per frame)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        parser().error("--batch-size must be >= 1 and --workers >= 0")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"csdfd.evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
