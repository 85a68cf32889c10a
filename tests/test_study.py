"""python -m csdfd.study: several strategies, one shared benchmark, one comparison table."""

from __future__ import annotations

import json

import pytest

from csdfd import study

TINY = ["--backbone", "test_efficientnet", "--img-size", "32", "--batch-size", "4",
        "--proj-width", "16", "--epochs", "1", "--synth-train-ids", "4", "--synth-val-ids", "2",
        "--synth-test-ids", "2", "--synth-frames", "4", "--synth-eval-frames", "2", "--quiet"]


def test_study_compares_modes(tmp_path, capsys):
    assert study.main([*TINY, "--modes", "O", "csdfd", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| test_efficientnet (O) |" in out and "| test_efficientnet (csdfd) |" in out
    assert "cross-domain mean" in out
    summary = json.loads((tmp_path / "study.json").read_text())
    assert set(summary) == {"O", "csdfd"}
    for mode in ("O", "csdfd"):
        assert (tmp_path / mode / "results.json").is_file()
        saved = json.loads((tmp_path / mode / "results.json").read_text())
        assert saved["test"] == summary[mode]["test"]
        assert saved["config"]["seed"] == 0 and saved["config"]["mode"] == mode
    assert (tmp_path / "study.md").read_text().count("(csdfd)") == 4  # AUC, AP, EER, acc
    assert (tmp_path / "study_curves.png").is_file()


def test_study_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        study.main([*TINY, "--modes", "O", "XX"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        study.main([*TINY, "--c", "-1", "--out", str(tmp_path)])
    assert info.value.code == 2 and "c must be non-negative" in capsys.readouterr().err


def test_study_help_hides_the_single_run_flags_it_refuses(capsys):
    with pytest.raises(SystemExit) as info:
        study.main(["--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "--modes" in text and "--epochs" in text
    assert "--resume" not in text and "--stop-after" not in text
    for flag in (["--resume"], ["--stop-after", "1"]):
        with pytest.raises(SystemExit) as info:
            study.main([*TINY, *flag])
        assert info.value.code == 2
        assert "apply to single runs: use python -m csdfd.train" in capsys.readouterr().err


def test_study_refuses_a_batch_larger_than_the_training_set(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        study.main([*TINY, "--modes", "O", "--batch-size", "99", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "batch_size 99 is larger than the 16 real" in err
    assert not (tmp_path / "s").exists()
