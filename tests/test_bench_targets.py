"""The benchmark summary judges issue 4's GPU targets from the rows of one run."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture
def harness(monkeypatch):
    path = Path(__file__).parents[1] / "bench" / "conftest.py"
    spec = importlib.util.spec_from_file_location("csdfd_bench_harness", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEVICE", "cuda")
    return mod


def row(impl, p, seconds, gbs=None, dtype="float32"):
    r = dict(op="uvs_cgr", impl=impl, K=2, P=p, dtype=dtype, seconds=seconds)
    return r if gbs is None else dict(r, **{"GB/s": gbs})


def test_targets_met_and_missed(harness):
    p = 20_000_000
    rows = [row("copy", p, 8.5e-5, 3800.0), row("triton", p, 1.2e-4, 3300.0),
            row("cuda", p, 3.2e-4, 1260.0), row("reference", p, 7.8e-2),
            row("naive (cat + host scipy)", p, 7.5e-3), row("triton", p, 1e-4, 900.0, "bfloat16"),
            dict(op="csdfd_step", impl="triton", P=p, seconds=0.14, share=0.004),
            dict(op="csdfd_step", impl="reference", P=p, seconds=0.2, share=0.35)]
    lines = harness._targets(rows)
    triton = next(line for line in lines if line.startswith("target triton P="))
    assert "vs copy 87% (target >= 85%: met)" in triton
    assert "vs naive 62.5x (target >= 50x: met)" in triton
    cuda = next(line for line in lines if line.startswith("target cuda P="))
    assert "vs copy 33% (target >= 85%: NOT met)" in cuda and "23.4x" in cuda
    assert "target triton step share 0.40% (target <= 1%: met)" in lines
    assert "target reference step share 35.00% (target <= 1%: NOT met)" in lines


def test_missing_baselines_are_said_and_cpu_judges_nothing(harness, monkeypatch):
    lines = harness._targets([row("triton", 100_000_000, 6e-4, 3000.0)])
    assert lines == ["target triton P=100,000,000 fp32: vs copy: not measured"]
    monkeypatch.setattr(harness, "DEVICE", "cpu")
    assert harness._targets([row("triton", 100_000_000, 6e-4, 3000.0)]) == []
