"""Data parallelism (csdfd.distributed): 2 gloo ranks on CPU against one process.

Three process launches in all (every one bounded: a subprocess timeout and the process group's
``dist_timeout``): two ranks x batch 4 for one epoch, then resuming a one-process checkpoint;
and a rank that dies. The single-process side runs in this process (no process group).
A ViT backbone (LayerNorm, no BatchNorm), so 2 x b and 1 x 2b are the same computation.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402

SYNTH = {"synth_train_ids": 4, "synth_val_ids": 2, "synth_test_ids": 2, "synth_frames": 4,
         "synth_eval_frames": 2}
CFG = {"backbone": "test_vit", "img_size": 32, "proj_width": 16, "epochs": 2, "log_every": 1,
       "eval_batch_size": 64, "lr": 1e-3, "device": "cpu", "dist_timeout": 60, **SYNTH}
WORKER = Path(__file__).parent / "dist_worker.py"
LIMIT = 150  # seconds per launch (2 loaded CPU cores); the process group gives up after 60


def _launch(spec: dict, tmp: Path, world: int = 2) -> list[subprocess.CompletedProcess]:
    """``world`` ranks of tests/dist_worker.py over gloo, as torchrun would set them up."""
    path = tmp / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).parents[1])
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": root, "PYTHONWARNINGS": "ignore"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    done, deadline = [], time.monotonic() + LIMIT
    for p in procs:
        try:
            out = p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank did not finish within {LIMIT} s")
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out))
    return done


def _load(dump: Path, name: str) -> dict:
    return torch.load(dump / f"{name}.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """one: 1 process x batch 8, 2 epochs (resumed after 1); two: 2 ranks x 4, 1 epoch, then
    2 ranks resuming one's epoch-1 checkpoint; back: 1 process resuming two's checkpoint.
    A rank-local non-finite verdict at step 1 (rank 1 of two, the only process of one)."""
    tmp = tmp_path_factory.mktemp("dist")
    d1, d2, db = (tmp / n for n in ("dump1", "dump2", "dumpb"))
    for d in (d1, d2, db):
        d.mkdir()
    assert "WORLD_SIZE" not in os.environ
    one = tmp / "one1"  # epoch 1; its last.pt is resumed three times
    dist_worker.run({"cfg": {**CFG, "batch_size": 8}, "dump": str(d1), "bad": [0, 1],
                     "runs": [{"out": str(one), "stop_after": 1},
                              {"out": str(tmp / "one"), "resume": str(one / "last.pt")}]})
    two = _launch({"cfg": {**CFG, "batch_size": 4}, "dump": str(d2), "bad": [1, 1],
                   "runs": [{"out": str(tmp / "two"), "stop_after": 1},
                            {"out": str(tmp / "two_from_one"),
                             "resume": str(one / "last.pt")}]}, tmp)
    assert all(p.returncode == 0 for p in two), "\n".join(p.stdout[-3000:] for p in two)
    dist_worker.run({"cfg": {**CFG, "batch_size": 8}, "dump": str(db),
                     "runs": [{"out": str(tmp / "back"),
                               "resume": str(tmp / "two" / "last.pt")}]})
    return tmp, d1, d2, db


def _close(a: list, b: list, atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=atol)


def test_two_ranks_equal_one_process_with_twice_the_batch(runs):
    _, d1, d2, _ = runs
    one, two = _load(d1, "0-rank0"), _load(d2, "0-rank0")
    scale = one["rows"].abs().max()
    torch.testing.assert_close(two["rows"], one["rows"], rtol=1e-4, atol=1e-5 * scale)  # g1, g2
    torch.testing.assert_close(two["out"], one["out"], rtol=1e-4, atol=1e-5 * scale)  # UVS/CGR
    # after 2 steps (one skipped), i.e. one AdamW step: each coordinate moves by lr g/(|g| + eps),
    # which for |g| ~ eps (1e-8) turns the rows' rounding (one-pass sums rows by group, in
    # another order for 2 x 4 than for 1 x 8) into up to ~1% of lr = 1e-3
    _close(two["params"], one["params"], atol=3e-5)


def test_ranks_stay_bitwise_identical(runs):
    _, _, d2, _ = runs
    for run in ("0", "1"):
        r0, r1 = _load(d2, f"{run}-rank0"), _load(d2, f"{run}-rank1")
        assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"], strict=True))
    r0, r1 = _load(d2, "0-rank0"), _load(d2, "0-rank1")
    assert torch.equal(r0["rows"], r1["rows"]) and torch.equal(r0["out"], r1["out"])


def test_nonfinite_on_one_rank_is_skipped_on_both(runs):
    _, d1, d2, _ = runs
    r0, r1 = _load(d2, "0-rank0"), _load(d2, "0-rank1")
    assert r0["skipped"] == r1["skipped"] == _load(d1, "0-rank0")["skipped"] == 1


def test_sharded_evaluation_equals_one_process(runs):
    _, _, d2, _ = runs
    for rank in (0, 1):
        dump = _load(d2, f"0-rank{rank}")
        assert dump["eval_sharded"].keys() == dump["eval_single"].keys()
        for name, metrics in dump["eval_sharded"].items():
            assert metrics == pytest.approx(dump["eval_single"][name], abs=1e-9), name


def test_resume_across_world_sizes(runs):
    _, d1, d2, db = runs
    straight = _load(d1, "1-rank0")["params"]
    # atol: see test_two_ranks_equal_one_process_with_twice_the_batch (AdamW at |g| ~ eps)
    _close(_load(d2, "1-rank0")["params"], straight, atol=3e-5)  # 1 process -> 2 ranks
    _close(_load(db, "0-rank0")["params"], straight, atol=3e-5)  # 2 ranks -> 1 process


def test_only_rank_0_writes_and_results_record_the_world(runs):
    tmp = runs[0]
    result = json.loads((tmp / "two_from_one" / "results.json").read_text())
    assert (result["world_size"], result["global_batch"]) == (2, 8)
    for two, one in (("two", "one1"), ("two_from_one", "one")):  # one writer: no duplicates
        rows = (tmp / two / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == len(set(rows)) == len((tmp / one / "metrics.jsonl").read_text()
                                                  .splitlines()) == 3  # 2 steps + eval
        assert {p.name for p in (tmp / two).iterdir()} >= {"last.pt", "config.yaml"}


def test_a_dead_rank_stops_the_other_with_its_name(tmp_path):
    t0 = time.monotonic()
    procs = _launch({"cfg": {**CFG, "batch_size": 4}, "dump": str(tmp_path), "die": [1, 1],
                     "runs": [{"out": str(tmp_path / "run")}]}, tmp_path)
    assert procs[1].returncode == 3
    assert procs[0].returncode != 0 and "RankFailure" in procs[0].stdout, procs[0].stdout[-2000:]
    message = next(line for line in procs[0].stdout.splitlines() if "RankFailure:" in line)
    assert "failed rank(s): [1]" in message, message
    assert time.monotonic() - t0 < LIMIT
