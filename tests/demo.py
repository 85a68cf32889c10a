"""A tiny detector trained once per test session on the embedded synthetic benchmark (about
ten seconds on 2 CPU cores), for the tests of csdfd.predict and csdfd.evaluate."""

from __future__ import annotations

from pathlib import Path

#: test_efficientnet at 32 px, 4 training identities x 4 frames, one epoch
FLAGS = ["--backbone", "test_efficientnet", "--img-size", "32", "--batch-size", "4",
         "--proj-width", "16", "--epochs", "1", "--synth-train-ids", "4", "--synth-val-ids",
         "2", "--synth-test-ids", "2", "--synth-frames", "4", "--synth-eval-frames", "2",
         "--eval-batch-size", "64", "--quiet"]
_RUNS: dict[str, Path] = {}


def demo_run(tmp_path_factory) -> Path:
    """The run folder (best.pt, last.pt, config.yaml, ...), trained on first use."""
    if "demo" not in _RUNS:
        from csdfd import train

        out = tmp_path_factory.mktemp("demo-run")
        assert train.main([*FLAGS, "--out", str(out)]) == 0
        _RUNS["demo"] = out
    return _RUNS["demo"]
