"""Config: paper defaults, the synthetic preset, YAML then flags, validation and --help."""

from __future__ import annotations

import dataclasses

import pytest

from csdfd import train as cli
from csdfd.config import SYNTHETIC_PRESET, Config, dump_yaml, load_yaml, resolve


def test_paper_defaults_for_real_data():
    cfg = Config()
    assert (cfg.backbone, cfg.img_size, cfg.batch_size) == ("efficientnet_b4", 256, 16)
    assert (cfg.c, cfg.tau, cfg.mode, cfg.blend) == (0.5, 0.01, "csdfd", "sbi")


def test_synthetic_preset_applies_only_to_synthetic_data(tmp_path):
    synth = resolve({})
    for key, value in SYNTHETIC_PRESET.items():
        assert getattr(synth, key) == value
    real = resolve({"data": str(tmp_path)})
    assert real.backbone == "efficientnet_b4" and real.img_size == 256
    assert resolve({"img_size": 96}).img_size == 96  # explicit values beat the preset


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("c: 1\nepochs: 3\nmode: OS\n")
    parser = cli.build_parser()
    args = parser.parse_args(["--config", str(path), "--epochs", "5", "--amp"])
    cfg = resolve(cli.overrides_from(args))
    assert cfg.c == 1.0 and isinstance(cfg.c, float)
    assert cfg.epochs == 5 and cfg.mode == "OS" and cfg.amp is True


def test_yaml_round_trip(tmp_path):
    cfg = resolve({"mode": "cgr", "mu_iters": 7, "weights": None})
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert resolve(load_yaml(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    ("text", "match"),
    [("epochs: [1", "not valid YAML"), ("- 1\n- 2\n", "mapping"), ("epoch: 3\n", "unknown field")],
)
def test_bad_yaml(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_yaml(path)


def test_missing_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "match"),
    [({"mode": "SO"}, "mode must be one of"), ({"c": -1.0}, "c must be non-negative"),
     ({"tau": -0.1}, "tau must be non-negative"),
     ({"proj_depth": 0, "mode": "csdfd"}, "set proj_depth >= 1"),
     ({"batch_size": 0}, "batch_size"), ({"warmup": 1.0}, "warmup"),
     ({"optimizer": "lamb"}, "optimizer")],
)
def test_validation_names_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        resolve(override)


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in text
    for flag in ("--fused", "--config", "--resume", "--out", "--stop-after"):
        assert flag in text


def test_fused_means_auto_and_excludes_backend():
    parser = cli.build_parser()
    assert cli.overrides_from(parser.parse_args(["--fused"]))["backend"] == "auto"
    with pytest.raises(ValueError, match="--fused"):
        cli.overrides_from(parser.parse_args(["--fused", "--backend", "reference"]))
