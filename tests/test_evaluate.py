"""``python -m csdfd.evaluate`` (csdfd/evaluate.py) and training on preprocessed real data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from test_frames import celebdf_videos, ffpp_videos, make_faces

from csdfd import evaluate as E
from csdfd.data.frames import DiskFrames, open_faces


class Brightness(torch.nn.Module):
    """A stand-in detector: logit grows with the mean input value (brighter = more fake)."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Identity()
        self.scale = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        return self.scale * x.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    return (make_faces(root / "ffpp", ffpp_videos(), n=3),
            make_faces(root / "celeb", celebdf_videos(), n=3, dataset="celebdf"))


def test_video_keys_keep_methods_apart(faces):
    _, videos = open_faces(f"ffpp:{faces[0]}")
    test = [v for v in videos if v.split == "test"]
    frames = DiskFrames(test)
    keys = [k for k in frames.keys if k.endswith("000_003")]
    assert keys == ["ffpp/Deepfakes/000_003", "ffpp/FaceSwap/000_003"]
    scores = np.arange(len(frames), dtype=np.float32)
    labels, vscores = E.video_scores(frames, scores)
    for i in range(len(frames.keys)):  # a video's score is the mean of its own frames only
        assert vscores[i] == pytest.approx(scores[frames.video == i].mean())
        assert labels[i] == frames.videos[i].label


@pytest.mark.parametrize("batch_size, workers", [(4, 0), (5, 2)])
def test_streamed_scores_and_metrics(faces, batch_size, workers):
    _, videos = open_faces(f"ffpp:{faces[0]}")
    frames = DiskFrames(videos, crop=False)
    model = Brightness()
    scores = E.frame_scores(model, frames, batch_size=batch_size, workers=workers)
    x = torch.from_numpy(frames.images(np.arange(len(frames)))).float()
    mean = torch.tensor([0.485, 0.456, 0.406]) * 255
    std = torch.tensor([0.229, 0.224, 0.225]) * 255
    expected = torch.sigmoid(model(((x - mean) / std).permute(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    result, got = E.evaluate_set(model, frames, _args(batch_size, workers))
    np.testing.assert_array_equal(got, scores)
    assert result["frame"]["auc"] == pytest.approx(roc_auc_score(frames.labels, scores))
    assert result["frame"]["ap"] == pytest.approx(average_precision_score(frames.labels, scores))
    vlabels, vscores = E.video_scores(frames, scores)
    assert result["video"]["auc"] == pytest.approx(roc_auc_score(vlabels, vscores))
    assert set(result["methods"]) == {"Deepfakes", "FaceSwap"}
    assert (result["videos"], result["frames"]) == (12, 36)


def _args(batch_size=8, workers=0, **kw):
    return E.parser().parse_args(["x.pt", "--batch-size", str(batch_size), "--workers",
                                  str(workers), "--quiet", *sum(([f"--{k}", v] for k, v in
                                                                 kw.items()), [])])


def test_table_has_frame_and_video_columns_and_the_mean():
    r = {"frame": {"auc": 0.9, "ap": 0.8, "eer": 0.1, "acc": 0.7},
         "video": {"auc": 1.0, "ap": 1.0, "eer": 0.0, "acc": 1.0}, "videos": 2, "frames": 6}
    text = E.table({"in-domain": r, "celebdf": r, "dfdc": dict(r, frame=dict(r["frame"],
                                                                             auc=0.7))},
                   ["celebdf", "dfdc"])
    lines = text.splitlines()
    assert "frame AUC" in lines[0] and "video EER" in lines[0]
    assert lines[-1].startswith("| cross-domain mean | | | 80.00 |")


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    """One tiny epoch of CS-DFD on the preprocessed FF++-like tree (full SBI for stream 2)."""
    pytest.importorskip("timm")
    from csdfd import train

    out = tmp_path_factory.mktemp("run")
    code = train.main(["--data", f"ffpp:{faces[0]}", "--test", f"celebdf:{faces[1]}",
                       "--backbone", "lcnet_050", "--img-size", "32", "--batch-size", "4",
                       "--epochs", "1", "--proj-width", "16", "--eval-batch-size", "16",
                       "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_training_on_real_data(trained):
    result = json.loads((trained / "results.json").read_text())
    assert result["benchmark"] == "ffpp"
    assert set(result["test"]) == {"in-domain", "celebdf"}


def test_evaluate_cli(trained, faces, tmp_path):
    out = tmp_path / "eval"
    assert E.main([str(trained / "best.pt"), "--data", f"ffpp:{faces[0]}", "--test",
                   f"celebdf:{faces[1]}", "--out", str(out), "--workers", "0", "--quiet",
                   "--save-scores"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert list(report["sets"]) == ["in-domain", "celebdf"]
    assert report["sets"]["celebdf"]["videos"] == 2 and report["sets"]["in-domain"]["videos"] == 4
    assert "| cross-domain mean |" in (out / "eval.md").read_text()
    lines = (out / "scores-celebdf.csv").read_text().splitlines()
    assert lines[0] == "video,label,frames,score" and len(lines) == 3


def test_evaluate_defaults_to_the_runs_sets(trained):
    assert E.main([str(trained / "best.pt"), "--workers", "0", "--quiet"]) == 0
    report = json.loads((trained / "eval" / "eval.json").read_text())
    assert list(report["sets"]) == ["in-domain", "celebdf"]


def test_evaluate_errors(trained, faces, capsys):
    assert E.main([str(trained / "best.pt"), "--test", f"celebdf:{faces[1]}", "--split", "val",
                   "--quiet"]) == 2
    assert "no videos in its val split" in capsys.readouterr().err
    assert E.main([str(Path(trained) / "missing.pt"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_parses_every_set_before_creating_its_folder(trained, faces, tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    shutil.copy(trained / "best.pt", ckpt)
    missing = tmp_path / "nowhere"
    for argv in ([str(ckpt), "--test", f"celebdf:{missing}"],  # default OUT: CKPT_DIR/eval
                 [str(ckpt), "--data", f"ffpp:{faces[0]}", "--test", f"celebdf:{missing}",
                  "--out", str(tmp_path / "out")]):  # a good set first, then a bad one
        assert E.main([*argv, "--workers", "0", "--quiet"]) == 2
        assert "nowhere" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_evaluate_a_synthetic_checkpoint(tmp_path_factory, tmp_path):
    """python -m csdfd.evaluate CKPT on a run of the embedded benchmark: re-rendered from the
    checkpoint's config, evaluated in-domain and on every target, the run's own test AUCs."""
    from demo import demo_run

    run = demo_run(tmp_path_factory)
    out = tmp_path / "eval"
    assert E.main([str(run / "best.pt"), "--out", str(out), "--workers", "0", "--quiet",
                   "--save-scores"]) == 0
    report = json.loads((out / "eval.json").read_text())
    trained = json.loads((run / "results.json").read_text())["test"]
    assert list(report["sets"]) == list(trained)  # in-domain, then the targets
    for name, r in report["sets"].items():
        assert r["frame"]["auc"] == pytest.approx(trained[name]["auc"], abs=1e-9), name
        assert r["videos"] is None and r["video"]["auc"] is None
    assert len(report["sets"]["in-domain"]["methods"]) == 2  # the two source families
    lines = (out / "frames-in-domain.csv").read_text().splitlines()
    assert lines[0] == "video,frame,label,score" and len(lines) == 1 + 8
    assert "| in-domain | - | 8 |" in (out / "eval.md").read_text()


def test_a_failed_evaluate_leaves_no_folder(trained, faces, tmp_path_factory, tmp_path):
    from demo import demo_run

    out = tmp_path / "eval"
    # the second set fails (no val split): nothing of the first is written either
    assert E.main([str(trained / "best.pt"), "--data", f"ffpp:{faces[0]}", "--test",
                   f"celebdf:{faces[1]}", "--split", "val", "--out", str(out), "--quiet"]) == 2
    assert E.main([str(demo_run(tmp_path_factory) / "best.pt"), "--split", "val", "--out",
                   str(out), "--quiet"]) == 2
    assert E.main([str(tmp_path / "missing.pt"), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
