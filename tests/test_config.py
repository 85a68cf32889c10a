"""Config: paper defaults, the synthetic preset, YAML then flags, validation and --help."""

from __future__ import annotations

import dataclasses
import re

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


def test_yaml_values_are_typed(tmp_path):
    """PyYAML reads 1e-3 as a string and 2.0 as a float: unambiguous values are converted."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nepochs: 2.0\nbatch_size: '8'\nc: 1\nmu_iters: null\n"
                    "weights: none\ntest: celebdf:/faces/celebdf\n")
    values = load_yaml(path)
    assert values == {"lr": 1e-3, "epochs": 2, "batch_size": 8, "c": 1.0, "mu_iters": None,
                      "weights": None, "test": ["celebdf:/faces/celebdf"]}
    assert type(values["epochs"]) is int and type(values["lr"]) is float
    cfg = resolve(values)
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (1e-3, 2, 8)


@pytest.mark.parametrize(
    ("text", "match"),
    [('batch_size: "abc"', "batch_size must be an integer, got 'abc'"),
     ("epochs: 1.5", "epochs must be an integer, got 1.5"),
     ("lr: fast", "lr must be a number, got 'fast'"),
     ("amp: 1", "amp must be true or false, got 1"),
     ("epochs: true", "epochs must be an integer, got True"),
     ("mu_iters: 2.5", "mu_iters must be an integer or null"),
     ("proj_act: no", "proj_act must be a string, got False .quote it"),
     ("test: [1, 2]", "test must be a list of strings")],
)
def test_yaml_wrong_type_names_file_field_and_type(tmp_path, text, match):
    path = tmp_path / "typed.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=f"config file .*typed.yaml: {match}"):
        load_yaml(path)


def test_unknown_field_gets_a_close_match(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("lrr: 0.1\nepoch: 3\nzzz: 1\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown field\(s\) 'lrr' \(did you mean "
                       r"lr\?\), 'epoch' \(did you mean epochs\?\), 'zzz';"):
        load_yaml(path)
    with pytest.raises(ValueError, match=r"'batchsize' \(did you mean batch_size\?\)"):
        resolve({"batchsize": 4})


def test_python_api_values_are_typed():
    assert resolve({"lr": "1e-3", "epochs": 3.0}).epochs == 3
    with pytest.raises(ValueError, match="epochs must be an integer, got 1.5"):
        resolve({"epochs": 1.5})


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--epochs", "1.5"], "argument --epochs: epochs must be an integer, got '1.5'"),
     (["--lr", "fast"], "argument --lr: lr must be a number, got 'fast'"),
     (["--lrr", "0.1"], r"unrecognized arguments: --lrr 0.1; '--lrr' \(did you mean --lr\?\)")],
)
def test_flags_get_the_same_typing(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_flags_coerce_like_yaml():
    args = cli.build_parser().parse_args(["--epochs", "2.0", "--lr", "1e-3", "--mu-iters", "none"])
    assert (args.epochs, args.lr, args.mu_iters) == (2, 1e-3, None)


@pytest.mark.parametrize(("text", "field"), [('batch_size: "abc"', "batch_size"),
                                             ("epochs: 1.5", "epochs")])
def test_cli_bad_yaml_is_one_line_and_nonzero(tmp_path, capsys, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.startswith("csdfd.train: error: config file") and field in err and "bad.yaml" in err
    assert not (tmp_path / "run").exists()


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
