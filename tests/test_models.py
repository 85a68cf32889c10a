"""The detector: backbone by name, projection layer phi, parameter split, input size, and the
starting weights (local file, timm's pretrained weights from the cache, offline, no network)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from csdfd import weights
from csdfd.config import resolve
from csdfd.models import Detector, build_model, check_backbone

TINY = {"backbone": "test_efficientnet", "img_size": 32, "proj_width": 16}


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_projection_depth_and_split(depth):
    mode = "csdfd" if depth else "uvs"
    model = build_model(resolve({**TINY, "proj_depth": depth, "mode": mode}))
    linears = [m for m in model.phi if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.GELU)) for m in model.phi)
    theta, theta_p = model.theta(), model.theta_p()
    assert {id(p) for _, p in theta} | {id(p) for _, p in theta_p} == {
        id(p) for p in model.parameters()}
    assert not {id(p) for _, p in theta} & {id(p) for _, p in theta_p}
    assert all(n.startswith("phi.") for n, _ in theta_p) and len(theta_p) == 2 * depth
    assert any(n.startswith("classifier.") for n, _ in theta)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3,)


def test_feature_width_is_measured_not_guessed():
    # lcnet's num_features (256) differs from its pooled output width (1280)
    model = build_model(resolve({**TINY, "backbone": "lcnet_050"}))
    assert model.phi[0].in_features == 1280


@pytest.mark.parametrize(("name", "close"), [("efficientnet_b44", "efficientnet_b4"),
                                              ("resnett18", "resnet18")])
def test_unknown_backbone_lists_close_matches(name, close):
    with pytest.raises(ValueError, match=f"unknown backbone '{name}'.*{close}"):
        check_backbone(name)
    with pytest.raises(ValueError, match="close matches"):
        build_model(resolve({**TINY, "backbone": name}))


def test_local_weights_are_loaded(tmp_path, capsys):
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", num_classes=7)  # with a head
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = build_model(resolve({**TINY, "weights": str(path)}))
    ref = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier")}
    got = model.backbone.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    n = len(ref)
    assert (f"loaded {n} of {n} tensors from {path} (2 more in the file left out: "
            "classifier.weight, classifier.bias)") in capsys.readouterr().err


def _without(state: dict, drop: str) -> dict:
    return {k: v for k, v in state.items() if k != drop}


@pytest.mark.parametrize(("content", "match"), [
    (lambda s: {"encoder.layer0.weight": torch.zeros(3)}, "matches none of the {p} parameters"),
    (lambda s: timm.create_model("test_resnet").state_dict(), "matches none of the {p} parameters"),
    (lambda s: _without(s, "bn1.weight"),
     "{m} of its {n} tensors match; 1 missing \\(bn1.weight\\)$"),
    (lambda s: {**s, "conv_stem.weight": s["conv_stem.weight"][:1]},
     "{m} of its {n} tensors match; 1 of another shape \\(conv_stem.weight \\(1, 3, 3, 3\\) vs "
     "\\(24, 3, 3, 3\\)\\)$"),
])
def test_weights_that_do_not_fit(tmp_path, content, match):
    """A file matching nothing, or leaving backbone tensors unfilled, is an error saying so."""
    backbone = timm.create_model("test_efficientnet", num_classes=0)
    own = backbone.state_dict()
    path = tmp_path / "other.pth"
    torch.save(content(own), path)
    match = match.format(p=len(list(backbone.parameters())), n=len(own), m=len(own) - 1)
    with pytest.raises(RuntimeError, match=f"'{path}'.*{match}"):
        build_model(resolve({**TINY, "weights": str(path)}))


def test_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(resolve({**TINY, "weights": str(tmp_path / "missing.pth")}))
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(RuntimeError, match="notes.pth.*not a torch or safetensors state dict"):
        build_model(resolve({**TINY, "weights": str(text)}))


def test_detector_forward_is_backbone_phi_classifier():
    model = build_model(resolve(TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    manual = model.classifier(model.phi(model.backbone(x))).squeeze(-1)
    torch.testing.assert_close(model(x), manual)
    assert isinstance(model, Detector)


# --- input size (ViT and kin are built at --img-size; CNNs never get it) ----------------------

@pytest.mark.parametrize(("name", "size"), [("vit_tiny_patch16_224", 64),
                                            ("vit_base_patch16_224", 256)])
def test_vit_is_built_at_the_image_size(name, size):
    model = build_model(resolve({"backbone": name, "img_size": size, "proj_width": 16})).eval()
    assert model.backbone.patch_embed.img_size == (size, size)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1,)


@pytest.mark.parametrize(("name", "size", "passed"), [
    ("test_vit", 48, True), ("test_vit", 160, False),  # 160: its default, left to timm
    ("test_efficientnet", 48, False), ("test_resnet", 40, False)])
def test_img_size_goes_only_to_fixed_size_models(monkeypatch, name, size, passed):
    seen = []
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda n, **kw: (seen.append(kw), create(n, **kw))[1])
    build_model(resolve({"backbone": name, "img_size": size, "proj_width": 16}))
    assert seen[0].get("img_size") == (size if passed else None)


@pytest.mark.parametrize("size", [64, 256])
def test_vit_weights_saved_at_224_load_at_another_size(tmp_path, capsys, size):
    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10)
    path = tmp_path / "vit224.safetensors"
    save_file(source.state_dict(), path)
    model = build_model(resolve({"backbone": "vit_tiny_patch16_224", "img_size": size,
                                 "proj_width": 16, "weights": str(path)}))
    got, ref = model.backbone.state_dict(), source.state_dict()
    grid = size // 16
    assert got["pos_embed"].shape == (1, 1 + grid * grid, 192)
    torch.testing.assert_close(got["pos_embed"], resample_abs_pos_embed(
        ref["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1))
    for k in set(got) - {"pos_embed"}:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    assert f"loaded {len(got)} of {len(got)} tensors" in capsys.readouterr().err
    assert model(torch.randn(2, 3, size, size)).shape == (2,)


# --- --pretrained: the local cache, HF_HUB_OFFLINE, no network ---------------------------------

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty Hugging Face cache, and sockets that record each attempt and fail at once (as
    DNS does without network); ``no_network.calls`` lists the attempts."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:1])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    refuse.calls = calls
    return refuse


def _offline(monkeypatch, how: str) -> None:
    if how == "env":  # set in the environment after huggingface_hub was imported
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # set before: huggingface_hub read it at import
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("how", ["env", "import"])
def test_pretrained_offline_fails_at_once_without_network(monkeypatch, no_network, how):
    _offline(monkeypatch, how)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="'test_efficientnet'.*not in the local cache and "
                                           "HF_HUB_OFFLINE is set.*--weights PATH"):
        build_model(resolve({**TINY, "pretrained": True}))
    assert time.monotonic() - start < 5 and no_network.calls == []


def test_pretrained_without_network_fails_at_once(no_network):
    start = time.monotonic()
    host = hf_constants.ENDPOINT.split("://")[-1]
    with pytest.raises(RuntimeError, match=f"{host} cannot be reached \\(.*Name or service not "
                                           "known\\).*--weights PATH"):
        build_model(resolve({**TINY, "pretrained": True}))
    assert time.monotonic() - start < 5 and len(no_network.calls) >= 1  # it did try, once


def test_pretrained_download_failure_is_explained(monkeypatch, no_network):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(weights, "_unreachable", lambda name: None)  # the server answered, then
    create = timm.create_model

    def fail(name, **kw):
        if kw.get("pretrained"):
            raise LocalEntryNotFoundError("connection dropped")
        return create(name, **kw)

    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(RuntimeError, match="the download failed \\(connection dropped\\).*"
                                           "--weights PATH"):
        build_model(resolve({**TINY, "pretrained": True}))


@pytest.mark.parametrize("how", ["env", "import"])
def test_pretrained_from_the_cache_needs_no_network(monkeypatch, no_network, capsys, how):
    torch.manual_seed(4)
    source = timm.create_model("test_efficientnet")
    repo = timm.models.get_pretrained_cfg("test_efficientnet").hf_hub_id
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = Path(hf_constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    save_file(source.state_dict(), root / "snapshots" / commit / "model.safetensors")
    _offline(monkeypatch, how)
    model = build_model(resolve({**TINY, "pretrained": True}))
    assert no_network.calls == []
    ref = source.state_dict()
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)
    assert "model.safetensors (2 more in the file left out" in capsys.readouterr().err
