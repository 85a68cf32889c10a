"""What ``csdfd.predict`` writes: the table on stdout, ``--json`` records, ``--csv`` frame rows,
``--cam`` Grad-CAM PNGs and ``--annotate`` videos (see csdfd.predict for the formats)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from .data.layouts import VIDEO_EXTS
from .scan import VIDEO, Input

CSV_COLUMNS = ("path", "kind", "status", "frame", "time_s", "faces", "score")


def unique_stems(inputs: list[Input]) -> list[str]:
    """File stems, with -2, -3, ... for repeats, to name per-input outputs."""
    seen: dict[str, int] = {}
    out = []
    for i in inputs:
        n = seen[i.path.stem] = seen.get(i.path.stem, 0) + 1
        out.append(i.path.stem if n == 1 else f"{i.path.stem}-{n}")
    return out


class Outputs:
    """Per-input outputs made as soon as an input is scored (Grad-CAM, annotated video), so
    that its face crops can be dropped; arguments are checked before any work starts."""

    def __init__(self, args: argparse.Namespace, inputs: list[Input], model, img_size: int):
        self.args = args
        self.names = {str(i.path): n for i, n in zip(inputs, unique_stems(inputs), strict=True)}
        self.annotate = _annotate_targets(args.annotate, inputs, self.names)
        self.cam = None
        if args.cam is not None:
            from .visualize import GradCam

            self.cam = GradCam(model, img_size, args.cam_layer)
        self.written: list[Path] = []

    def item_done(self, record: dict) -> None:
        """Write the input's Grad-CAM PNGs and annotated video, then keep only each face's
        box and score."""
        if self.cam is not None and record["status"] == "ok":
            self._cams(record)
        dst = self.annotate.get(record["path"])
        if dst is not None and record["status"] != "error":
            from .visualize import annotate_video

            annotate_video(Path(record["path"]), dst, record, self.args.threshold)
            self.written.append(dst)
        for f in record["frames"]:
            f["faces"] = [{"box": face["box"], "score": face["score"]} for face in f["faces"]]

    def _cams(self, record: dict) -> None:
        from .visualize import panel, write_png

        name = self.names[record["path"]]
        frames = [f for f in record["frames"] if f["score"] is not None]
        if record["kind"] == VIDEO:
            frames = sorted(frames, key=lambda f: -f["score"])[: self.args.cam_frames]
        for f in frames:
            faces = sorted(f["faces"], key=lambda face: -face["score"])
            crops = np.stack([face["input"] for face in faces])
            heat = self.cam(crops)
            rows = [(c, h, f"face {k + 1}: P(fake) {face['score']:.3f}")
                    for k, (c, h, face) in enumerate(zip(crops, heat, faces, strict=True))]
            where = "" if record["kind"] != VIDEO else f" frame {f['index']}" + (
                f" ({f['time_s']:.2f} s)" if f["time_s"] is not None else "")
            title = f"{Path(record['path']).name}{where}: P(fake) {f['score']:.3f}"
            path = self.args.cam / (f"{name}.cam.png" if record["kind"] != VIDEO
                                    else f"{name}.frame{f['index']:06d}.cam.png")
            write_png(path, panel(rows, title))
            self.written.append(path)


def _annotate_targets(dst: Path | None, inputs: list[Input],
                      names: dict[str, str]) -> dict[str, Path]:
    if dst is None:
        return {}
    videos = [i for i in inputs if i.kind == VIDEO]
    if not videos:
        raise ValueError("--annotate writes videos, but no input is a video")
    if dst.suffix.lower() in VIDEO_EXTS:
        if len(videos) > 1:
            raise ValueError(f"--annotate {dst} names one video, but {len(videos)} videos are "
                             "given; pass a folder to get one annotated video per input")
        return {str(videos[0].path): dst}
    return {str(v.path): dst / f"{names[str(v.path)]}.annotated.mp4" for v in videos}


def verdict(record: dict, threshold: float) -> str:
    if record["status"] != "ok":
        return {"no_face": "no face", "error": "error"}[record["status"]]
    return "fake" if record["score"] >= threshold else "real"


def table(records: list[dict], threshold: float) -> str:
    """Plain-text table: path, verdict, P(fake), faces scored, frames with a face / decoded."""
    rows = [("path", "verdict", "P(fake)", "faces", "frames")]
    for r in records:
        frames = r["frames"]
        used = sum(f["score"] is not None for f in frames)
        rows.append((r["path"], verdict(r, threshold),
                     "-" if r["score"] is None else f"{r['score']:.3f}",
                     str(sum(len(f["faces"]) for f in frames)) if frames else "-",
                     f"{used}/{len(frames)}" if frames else "-"))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if k < 2 else cell.rjust(w)
                               for k, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip() for row in rows)


def write_json(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1) + "\n")


def write_csv(path: Path, records: list[dict]) -> None:
    """One row per decoded frame of every input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in records:
            for f in r["frames"]:
                w.writerow([r["path"], r["kind"], r["status"], f["index"],
                            "" if f["time_s"] is None else f["time_s"], len(f["faces"]),
                            "" if f["score"] is None else f"{f['score']:.6f}"])


def report(records: list[dict], args: argparse.Namespace, stats: dict | None = None) -> None:
    """The table on stdout, each failed input on stderr, then the --json / --csv files."""
    print(table(records, args.threshold))
    for r in records:
        if r["status"] == "error":
            print(f"csdfd.predict: error: {r['path']}: {r['error']}", file=sys.stderr)
    if args.json:
        write_json(args.json, records)
    if args.csv:
        write_csv(args.csv, records)
    if stats and not args.quiet:
        rate = stats["frames"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
        print(f"{len(records)} inputs, {stats['frames']} frames in {stats['seconds']:.1f} s "
              f"({rate:.1f} frames/s)", file=sys.stderr)
