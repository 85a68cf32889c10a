"""``python -m csdfd.preprocess``: dataset videos -> 256 x 256 face crops + landmarks + index.

    python -m csdfd.preprocess ffpp:/data/FaceForensics++ --quality c23 --out /data/faces/ffpp
    python -m csdfd.preprocess celebdf:/data/Celeb-DF-v2 --out /data/faces/celebdf

Per video (layouts: :mod:`csdfd.data.layouts`): ``--frames`` frames evenly spaced over the whole
video, the largest dlib face in each, its landmarks, a crop (:mod:`csdfd.data.faces`). Output::

    OUT/METHOD/VIDEO_ID/000123.png   crops, named by frame number
    OUT/METHOD/VIDEO_ID/landmarks.npy  [frames, 68 or 81, 2] float32, crop pixels
    OUT/METHOD/VIDEO_ID/video.json   per-video record, written last: marks the video done
    OUT/index.json                   every video of the dataset: label, split, frames
    OUT/report.json                  counts, throughput; every failed video of the dataset and
                                     why, every incomplete one (fewer frames than its header)

Every file is written to a temporary name and renamed, so a killed run leaves no half-written
frame or index; a rerun skips finished videos and redoes unfinished ones, ending with the same
files as an uninterrupted run. A video that cannot be read (file missing, permission denied, not
decodable) or has no face is reported, never fatal; one that decodes fewer frames than its header
promises (a truncated file) is kept and reported as incomplete. ``--shard i/n`` (i = 0..n-1)
processes every n-th video, for several machines sharing OUT. FF++ reads the methods present
unless ``methods=`` names some.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .data import faces, layouts
from .data.faces import FaceExtractor, even_indices, read_frames, why_unreadable

INDEX_FORMAT = "csdfd-faces/1"
_extractor: FaceExtractor | None = None  # one per worker process
_options: dict = {}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if path.suffix == ".json":  # the markers: make them durable before they count
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def video_dir(out: Path, video: layouts.Video) -> Path:
    return out / video.method / video.video_id


def _init_worker(options: dict) -> None:
    global _extractor, _options
    cv2.setNumThreads(1)  # one core per worker process
    _options = options
    _extractor = FaceExtractor(options["landmarks_path"], options["size"], options["margin"],
                               options["threshold"], options["detect_size"])


def process_video(args: tuple[layouts.Video, Path]) -> dict:
    """Frames -> faces -> files of one video; returns its record (never raises)."""
    video, out = args
    folder = video_dir(out, video)
    record = {"key": video.key, "method": video.method, "video_id": video.video_id,
              "label": video.label, "split": video.split, "quality": video.quality,
              "source": str(video.path), "options": _options_record(_options)}
    try:
        if folder.exists():  # left unfinished by a killed run
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        n = _options["frames"]
        indices, frames, total, cause = _read(video.path, n)
        # the header's frame count promises len(even_indices(total, n)) frames; a truncated
        # file decodes fewer (read_frames stops at the first frame it cannot read)
        record.update(total_frames=total, sampled=len(indices),
                      frames_expected=len(even_indices(total, n)), frames_decoded=len(indices))
        record.update(_extract_faces(folder, indices, frames))
        record.update(_status(video.path, record, indices, cause))
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the run
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", frames=[])
    write_json(folder / "video.json", record)
    return record


def _extract_faces(folder: Path, indices: list[int], frames: list[np.ndarray]) -> dict:
    """Face crops as PNGs and all landmarks as one .npy in ``folder``; the record's fields."""
    names, lms, boxes, scores, no_face = [], [], [], [], []
    for index, frame in zip(indices, frames, strict=True):
        face = _extractor(frame)
        if face is None:
            no_face.append(index)
            continue
        ok, png = cv2.imencode(".png", cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR))
        names.append(f"{index:06d}.png")
        atomic_write(folder / names[-1], png.tobytes())
        lms.append(face.landmarks)
        boxes.append([round(float(v), 1) for v in face.box])
        scores.append(round(face.score, 4))
    if lms:
        atomic_write(folder / "landmarks.npy", _npy_bytes(np.stack(lms)))
    return {"frames": names, "frame_indices": [int(n[:6]) for n in names], "boxes": boxes,
            "scores": scores, "no_face": no_face}


def _read(path: Path, n: int) -> tuple[list[int], list[np.ndarray], int, str | None]:
    """:func:`read_frames`, and the cause where an image (of a frame folder) cannot be opened."""
    try:
        indices, frames, total, _ = read_frames(path, n)
        return indices, frames, total, None
    except PermissionError as exc:
        return [], [], 0, f"permission denied ({exc.filename})"
    except FileNotFoundError as exc:
        return [], [], 0, f"file missing ({exc.filename})"


def _status(path: Path, record: dict, decoded: list[int], cause: str | None) -> dict:
    """ok / failed with the reason, and a note when fewer frames decoded than expected."""
    expected, total = record["frames_expected"], record["total_frames"]
    if total == 0 or not decoded:
        return {"status": "failed", "error": f"unreadable: {cause or why_unreadable(path)}"}
    note = {}
    if len(decoded) < expected:
        note["incomplete"] = (f"decoded {len(decoded)} of the {expected} frames expected from "
                              f"the {total} its header counts, none after frame {decoded[-1]}: "
                              "the file is truncated or damaged")
    if not record["frames"]:
        return {"status": "failed", "error": f"no face in any of {len(decoded)} frames", **note}
    return {"status": "ok", **note}


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def _options_record(options: dict) -> dict:
    """The options that change the output; a resumed run must use the same."""
    keys = ("frames", "size", "margin", "threshold", "detect_size", "landmarks")
    return {k: options[k] for k in keys}


def load_record(folder: Path) -> dict | None:
    path = folder / "video.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_index(out: Path, videos: list[layouts.Video], meta: dict) -> dict:
    """index.json: one entry per finished video of the dataset (all shards), paths relative."""
    entries, pending = [], 0
    for video in videos:
        record = load_record(video_dir(out, video))
        if record is None:
            pending += 1
            continue
        entry = {k: record.get(k) for k in ("key", "method", "video_id", "label", "split",
                                            "quality", "status", "frames", "error",
                                            "frames_decoded", "frames_expected", "incomplete")}
        entry["dir"] = video_dir(Path(""), video).as_posix()
        entries.append(entry)
    index = dict(meta, format=INDEX_FORMAT, videos=entries, pending=pending)
    write_json(out / "index.json", index)
    return index


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n, e.g. 0/4, but got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need n >= 1 and 0 <= i < n (i counts from 0)")
    return i, n


def plan(videos: list[layouts.Video], out: Path, options: dict, shard: tuple[int, int],
         retry_failed: bool) -> tuple[list[layouts.Video], int]:
    """Videos of this shard still to do, and how many of them are already done."""
    i, n = shard
    mine = [v for k, v in enumerate(sorted(videos, key=lambda v: v.key)) if k % n == i]
    todo, done = [], 0
    want = _options_record(options)
    for video in mine:
        record = load_record(video_dir(out, video))
        if record is not None and record.get("options") != want:
            raise ValueError(f"{video_dir(out, video)} was made with options "
                             f"{record.get('options')}, not {want}: use the same options to "
                             "resume, or another --out")
        if record is None or (retry_failed and record.get("status") != "ok"):
            todo.append(video)
        else:
            done += 1
    return todo, done


def run(args: argparse.Namespace) -> dict:
    """Preprocess one dataset; returns the report (also written to OUT/report.json)."""
    name, root, spec_options = layouts.parse_spec(args.dataset)
    if name == "ffpp":
        spec_options.setdefault("quality", args.quality)
    videos = layouts.load(name, root, **spec_options)
    if name == "ffpp" and "methods" not in spec_options:
        print(_ffpp_methods_note(root, spec_options["quality"]), file=sys.stderr)
    if not videos:
        raise ValueError(f"{args.dataset}: the layout lists no videos")
    if args.limit:
        videos = sorted(videos, key=lambda v: v.key)[: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"frames": args.frames, "size": args.size, "margin": args.margin,
               "threshold": args.detector_threshold, "detect_size": args.detect_size,
               "landmarks": str(args.landmarks) if args.landmarks else "dlib-68",
               "landmarks_path": args.landmarks}  # None: the default model
    todo, done = plan(videos, out, options, parse_shard(args.shard), args.retry_failed)
    if todo:  # fail here, with a clear message, rather than in every worker: dlib, the model
        FaceExtractor(**faces.extractor_options(args))
    print(f"{name}: {len(videos)} videos, {done} already done, {len(todo)} to do "
          f"(shard {args.shard}, {args.workers} workers) -> {out}", file=sys.stderr)
    records, start = _run_workers(todo, out, options, args.workers)
    wall = time.perf_counter() - start
    meta = {"dataset": name, "root": str(root.resolve()), "spec": spec_options,
            "landmark_points": _points(out, videos), "options": _options_record(options)}
    index = build_index(out, videos, meta)
    return _report(out, records, index, {v.key: str(v.path) for v in videos}, done, wall,
                   args.workers)


def _ffpp_methods_note(root: Path, quality: str) -> str:
    """Which FF++ methods a run without ``methods=`` reads: those present."""
    present = layouts.ffpp_methods_present(root, quality)
    missing = [m for m in layouts.FFPP_METHODS if m not in present]
    return (f"ffpp: methods {'+'.join(present)} (the ones present"
            + (f"; not found: {', '.join(missing)}" if missing else "")
            + f"; name others with ffpp:{root},methods=A+B)")


def _run_workers(todo, out, options, workers) -> tuple[list[dict], float]:
    start = time.perf_counter()
    records: list[dict] = []
    bar = tqdm(total=len(todo), unit="video", dynamic_ncols=True, file=sys.stderr)
    jobs = [(v, out) for v in todo]
    try:
        if workers <= 1:
            _init_worker(options)
            results = map(process_video, jobs)
        else:
            pool = get_context("spawn").Pool(workers, _init_worker, (options,))
            results = pool.imap_unordered(process_video, jobs, chunksize=1)
        for record in results:
            records.append(record)
            bar.update()
            frames = sum(r.get("sampled", 0) for r in records)
            bar.set_postfix(frames_s=f"{frames / (time.perf_counter() - start):.1f}",
                            failed=sum(r["status"] != "ok" for r in records))
        if workers > 1:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if workers > 1:
            pool.terminate()
    return records, start


def _points(out: Path, videos: list[layouts.Video]) -> int | None:
    for video in videos:
        path = video_dir(out, video) / "landmarks.npy"
        if path.exists():
            return int(np.load(path, mmap_mode="r").shape[1])
    return None


def _report(out: Path, records: list[dict], index: dict, sources: dict[str, str], done: int,
            wall: float, workers: int) -> dict:
    """report.json: this run's counts and throughput, and from the index every failed or
    incomplete video of the dataset (earlier runs and other shards included)."""
    entries = index["videos"]
    failed = [{"key": e["key"], "source": sources.get(e["key"]), "error": e["error"]}
              for e in entries if e["status"] != "ok"]
    incomplete = [{"key": e["key"], "source": sources.get(e["key"]), "status": e["status"],
                   "frames_decoded": e["frames_decoded"], "frames_expected": e["frames_expected"],
                   "note": e["incomplete"]} for e in entries if e.get("incomplete")]
    sampled = sum(r.get("sampled", 0) for r in records)
    failed_now = sum(r["status"] != "ok" for r in records)
    report = {
        "processed": len(records), "ok": len(records) - failed_now, "failed": failed_now,
        "skipped_already_done": done, "pending_in_index": index["pending"],
        "failed_in_dataset": len(failed), "incomplete_in_dataset": len(incomplete),
        "frames_sampled": sampled, "frames_written": sum(len(r["frames"]) for r in records),
        "frames_without_face": sum(len(r.get("no_face", [])) for r in records),
        "seconds": round(wall, 2), "workers": workers,
        "frames_per_s": round(sampled / wall, 2) if wall > 0 else None,
        "frames_per_s_per_worker": round(sampled / wall / max(workers, 1), 2) if wall else None,
        "failures": failed, "incomplete": incomplete,
        "frames_without_face_by_video": {r["key"]: r["no_face"] for r in records
                                         if r["status"] == "ok" and r.get("no_face")},
    }
    write_json(out / "report.json", report)
    print(f"done: {report['ok']} ok, {failed_now} failed, {done} skipped; "
          f"{report['frames_written']}/{sampled} frames with a face, "
          f"{report['frames_per_s']} frames/s; index: {out / 'index.json'}; in the dataset: "
          f"{len(failed)} failed, {len(incomplete)} incomplete", file=sys.stderr)
    _print_some("FAILED", [f"{f['key']}: {f['error']}  ({f['source']})" for f in failed], out)
    _print_some("INCOMPLETE", [f"{f['key']}: {f['note']}  ({f['source']})" for f in incomplete],
                out)
    return report


def _print_some(tag: str, lines: list[str], out: Path, most: int = 20) -> None:
    for line in lines[:most]:
        print(f"  {tag} {line}", file=sys.stderr)
    if len(lines) > most:
        print(f"  ... {len(lines) - most} more in {out / 'report.json'}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csdfd.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="NAME:PATH[,key=value], NAME one of "
                   f"{', '.join(sorted(layouts.LAYOUTS))}; e.g. ffpp:/data/FF++,methods="
                   "Deepfakes+FaceSwap  or  folder:/data/mine,name=mine")
    p.add_argument("--out", required=True, help="output folder (one per dataset and quality)")
    p.add_argument("--quality", default="c23", choices=layouts.QUALITIES,
                   help="FF++ compression (default c23)")
    faces.add_options(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: all cores)")
    p.add_argument("--shard", default="0/1", help="i/n: process every n-th video from the i-th")
    p.add_argument("--retry-failed", action="store_true", help="redo videos that failed before")
    p.add_argument("--limit", type=int, default=0, help="only the first N videos (trial runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in ("frames", "size", "workers"):
        if getattr(args, name) < 1:
            parser().error(f"--{name} must be at least 1, but got {getattr(args, name)}")
    try:
        run(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
