"""Study entries MODE[:field=value,...] and python -m csdfd.study --seeds: per-seed runs, mean ±
std, paired differences, files."""

from __future__ import annotations

import json

import pytest

from csdfd import study
from csdfd.runlog import RunLog
from csdfd.seedstudy import (
    Entry,
    _pairs,
    entry_config,
    mean_curves,
    parse_entries,
    parse_entry,
    summarise,
)

TINY = ["--backbone", "test_efficientnet", "--img-size", "32", "--batch-size", "4",
        "--proj-width", "16", "--epochs", "1", "--synth-train-ids", "4", "--synth-val-ids", "2",
        "--synth-test-ids", "2", "--synth-frames", "4", "--synth-eval-frames", "2", "--quiet"]


def test_parse_entry():
    assert parse_entry("csdfd") == Entry("csdfd", "csdfd", {})
    e = parse_entry("csdfd:cgr_grad=exact,cgr_weight=0.5")
    assert (e.mode, e.fields) == ("csdfd", {"cgr_grad": "exact", "cgr_weight": 0.5})
    assert e.folder == "csdfd+cgr_grad=exact+cgr_weight=0.5"
    cfg = entry_config({"tau": 0.1, "cgr_weight": 2.0}, e, seed=3)
    assert (cfg.mode, cfg.cgr_grad, cfg.cgr_weight, cfg.tau, cfg.seed) == (
        "csdfd", "exact", 0.5, 0.1, 3)  # the entry's own fields win over the study's


@pytest.mark.parametrize(("spec", "match"), [
    ("XX", "mode must be one of"),
    ("csdfd:cgr_grad", "write MODE:field=value"),
    ("csdfd:", "write MODE:field=value"),
    ("csdfd:nofield=1", "unknown config field 'nofield'"),
    ("csdfd:seed=1", "seed is shared by the whole study"),
    ("csdfd:synth_frames=3", "synth_frames is shared"),
    ("csdfd:mode=OS", "mode is shared"),
])
def test_parse_entry_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_entry(spec)


def test_entries_are_validated_before_training():
    with pytest.raises(ValueError, match="entry 'csdfd:cgr_grad=bogus'.*cgr_grad must be"):
        parse_entries(["OS", "csdfd:cgr_grad=bogus"], {}, [0, 1])
    with pytest.raises(ValueError, match="repeat"):
        parse_entries(["OS", "OS"], {}, None)
    with pytest.raises(ValueError, match="--seeds repeat"):
        parse_entries(["OS"], {}, [1, 1])
    with pytest.raises(ValueError, match="--seed and --seeds"):
        parse_entries(["OS"], {"seed": 2}, [0, 1])


def test_pairs():
    entries = [parse_entry(s) for s in ("O", "S", "OS", "csdfd", "csdfd:cgr_grad=exact")]
    v = "csdfd:cgr_grad=exact"
    assert _pairs(entries) == [("csdfd", "OS"), ("OS", "S"), ("csdfd", "S"), (v, "csdfd"),
                               (v, "OS"), (v, "S")]
    assert _pairs([parse_entry("O"), parse_entry("csdfd")]) == []


def _result(in_domain: float, target: float) -> dict:
    metrics = lambda x: {"auc": x, "ap": x, "eer": 1 - x, "acc": x}  # noqa: E731
    return {"test": {"in-domain": metrics(in_domain), "t1": metrics(target)},
            "cross_domain_mean": metrics(target)}


def test_summarise_by_hand():
    entries = [parse_entry("OS"), parse_entry("csdfd")]
    results = {"OS": {0: _result(0.90, 0.60), 1: _result(0.80, 0.70)},
               "csdfd": {0: _result(0.95, 0.70), 1: _result(0.85, 0.70)}}
    stats = summarise(results, entries, [0, 1])
    assert stats["columns"] == ["in-domain", "t1", "cross-domain mean"]
    os_auc = stats["summary"]["OS"]["auc"]
    assert os_auc["in-domain"]["mean"] == pytest.approx(0.85)
    assert os_auc["in-domain"]["std"] == pytest.approx(0.1 / 2 ** 0.5)
    diffs = {(d["metric"], d["column"]): d for d in stats["differences"]}
    assert all((d["a"], d["b"]) == ("csdfd", "OS") for d in stats["differences"])
    d = diffs[("auc", "in-domain")]  # +0.05 on both seeds
    assert d["mean"] == pytest.approx(0.05) and d["std"] == pytest.approx(0.0, abs=1e-15)
    assert d["ci95"] == (pytest.approx(0.05), pytest.approx(0.05))
    d = diffs[("auc", "cross-domain mean")]  # +0.1 and 0.0
    assert d["mean"] == pytest.approx(0.05) and d["ci95"] == (pytest.approx(0), pytest.approx(0.1))
    assert diffs[("eer", "t1")]["mean"] == pytest.approx(-0.05)


def _eval(step: int, x: float) -> dict:
    return {"kind": "eval", "step": step, "val": {"auc": x}, "cross_domain_mean": {"auc": x / 2},
            "test": {"in-domain": {"auc": x}}}


def test_mean_curves():
    a = [{"kind": "train", "step": 1, "L1": 1.0, "cos": 0.2}, _eval(2, 0.6),
         {"kind": "train", "step": 2, "L1": 0.5, "cos": None}]
    b = [{"kind": "train", "step": 1, "L1": 3.0, "cos": 0.4},
         {"kind": "train", "step": 2, "L1": 1.5, "cos": 0.1}, _eval(2, 0.8),
         {"kind": "train", "step": 3, "L1": 9.0}]
    got = mean_curves([a, b])  # step 3: one run only; step 2's cos: one run has none
    train = [r for r in got if r["kind"] == "train"]
    assert [sorted(r) for r in train] == [["L1", "cos", "kind", "step"], ["L1", "kind", "step"]]
    assert [r["step"] for r in train] == [1, 2]
    assert (train[0]["L1"], train[0]["cos"], train[1]["L1"]) == pytest.approx((2.0, 0.3, 1.0))
    (ev,) = [r for r in got if r["kind"] == "eval"]
    assert ev["step"] == 2 and ev["val"]["auc"] == pytest.approx(0.7)
    assert ev["cross_domain_mean"]["auc"] == pytest.approx(0.35)
    assert ev["test"]["in-domain"]["auc"] == pytest.approx(0.7)


def test_two_seeds_two_modes_end_to_end(tmp_path, capsys):
    variant = "csdfd:cgr_grad=exact"
    argv = [*TINY, "--seeds", "0", "1", "--modes", "OS", variant, "--out", str(tmp_path),
            "--log-every", "2"]
    assert study.main(argv) == 0
    out = capsys.readouterr().out
    assert f"| {variant} − OS |" in out and " ± " in out and "seeds 0, 1" in out
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["entries"] == ["OS", variant]
    assert summary["benchmarks"]["0"] != summary["benchmarks"]["1"]  # rendered per seed
    per_seed = {}
    for seed in (0, 1):
        for entry, folder in (("OS", "OS"), (variant, "csdfd+cgr_grad=exact")):
            saved = json.loads((tmp_path / f"seed{seed}" / folder / "results.json").read_text())
            assert saved["config"]["seed"] == seed
            assert saved["config"]["cgr_grad"] == ("exact" if entry == variant else "eq24")
            assert saved["test"] == summary["runs"][entry][str(seed)]["test"]
            per_seed[entry, seed] = saved["cross_domain_mean"]["auc"]
    diff = next(d for d in summary["differences"] if d["metric"] == "auc"
                and d["column"] == "cross-domain mean")
    assert (diff["a"], diff["b"]) == (variant, "OS")
    want = [per_seed[variant, s] - per_seed["OS", s] for s in (0, 1)]
    assert diff["per_seed"] == pytest.approx(want)
    assert diff["mean"] == pytest.approx(sum(want) / 2)
    mean = summary["summary"]["OS"]["auc"]["cross-domain mean"]["mean"]
    assert mean == pytest.approx((per_seed["OS", 0] + per_seed["OS", 1]) / 2)
    md = (tmp_path / "study.md").read_text()
    assert md.count(f"({variant}), seed 1 |") == 4  # per-seed rows: AUC, AP, EER, accuracy
    assert (tmp_path / "study_curves.png").is_file()
    curve = mean_curves([RunLog.read(tmp_path / f"seed{s}" / "csdfd+cgr_grad=exact")
                         for s in (0, 1)])
    assert [(r["kind"], r["step"]) for r in curve] == [("train", 2), ("eval", 4), ("train", 4)]
    assert all("cos_p" in r for r in curve if r["kind"] == "train")
    # the same folders again: refused before anything trains
    with pytest.raises(SystemExit) as info:
        study.main(argv)
    assert info.value.code == 2 and "already holds runs" in capsys.readouterr().err


def test_study_validates_entries_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        study.main([*TINY, "--modes", "OS", "csdfd:cgr_weight=-1", "--out", str(tmp_path)])
    assert info.value.code == 2 and "cgr_weight must be" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained
