"""``python -m csdfd.predict`` throughput on one video: frames per second, and the share of each
stage (decode, face detection with landmarks and crops, model).

    pytest bench/bench_predict.py --benchmark-columns=mean

The video is a 640 x 480 mp4 of a real photograph's face moving over a flat background
(96 frames, 25 fps); predict samples ``FRAMES`` of them, evenly spaced, as csdfd.preprocess
does. The detector is untrained (speed does not depend on the weights): the synthetic preset's
test_efficientnet at 64 px and, on a GPU, the paper's efficientnet_b4 at 256 px. Two cases:
one video with ``workers`` 0 (decoding and detection in the benchmark's own process, each stage
timed alone), and four copies of it with 2 worker processes, whose start-up (a few seconds:
OpenCV, dlib and its landmark model) counts in the wall time. Shares are of the seconds spent
in each stage, summed over the worker processes.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from realfaces import write_face_video  # noqa: E402

pytest.importorskip("dlib", reason="predict detects faces with dlib: pip install 'csdfd[data]'")

FRAMES = 32
MODELS = [("test_efficientnet", 64)] + ([("efficientnet_b4", 256)]
                                       if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    write_face_video(folder / "face0.mp4", "grace_hopper", n=96, width=640, height=480,
                     face=300)
    for k in range(1, 4):
        (folder / f"face{k}.mp4").write_bytes((folder / "face0.mp4").read_bytes())
    return sorted(folder.glob("*.mp4"))


def _checkpoint(folder, backbone: str, size: int):
    from csdfd.checkpoint import save_checkpoint
    from csdfd.config import resolve
    from csdfd.models import build_model

    cfg = resolve({"backbone": backbone, "img_size": size})
    return save_checkpoint({"config": cfg.to_dict(), "model": build_model(cfg).state_dict()},
                           folder / f"{backbone}.pt")


@pytest.mark.parametrize("workers, n", [(0, 1), (2, 4)])
@pytest.mark.parametrize("backbone, size", MODELS)
def test_predict_throughput(benchmark, videos, tmp_path, backbone, size, workers, n):
    from csdfd import predict as PR

    ckpt = _checkpoint(tmp_path, backbone, size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = PR.parser().parse_args([str(ckpt), *map(str, videos[:n]), "--frames", str(FRAMES),
                                   "--workers", str(workers), "--device", device, "--quiet"])
    runs = []

    def once():
        records, stats = PR.run(args)
        assert all(r["status"] == "ok" for r in records) and stats["frames"] == n * FRAMES
        runs.append(stats)

    benchmark.pedantic(once, rounds=3, warmup_rounds=1, iterations=1)
    stats = min(runs[1:], key=lambda s: s["seconds"])
    work = {k: stats[f"{k}_s"] for k in ("decode", "detect", "model")}
    total = sum(work.values())
    share = {k: v / total for k, v in work.items()}
    fps = stats["frames"] / stats["seconds"]
    benchmark.extra_info.update(frames_per_s=fps, **{f"share_{k}": v for k, v in share.items()},
                                workers=workers, videos=n, device=device)
    print(f"\npredict {backbone}@{size}px on {device}, {workers} workers, {n} video(s): "
          f"{fps:.1f} frames/s ({FRAMES} of the 96 frames of each 640x480 video, "
          f"{stats['seconds']:.2f} s; decode {share['decode']:.0%}, detect "
          f"{share['detect']:.0%}, model {share['model']:.0%})")
