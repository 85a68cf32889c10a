"""The detector: backbone by name, projection layer phi, parameter split, weights loading."""

from __future__ import annotations

import pytest
import timm
import torch

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


def test_local_weights_are_loaded(tmp_path):
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


def test_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(resolve({**TINY, "weights": str(tmp_path / "missing.pth")}))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), other)
    with pytest.raises(RuntimeError, match="other.pth"):
        build_model(resolve({**TINY, "weights": str(other)}))


def test_detector_forward_is_backbone_phi_classifier():
    model = build_model(resolve(TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    manual = model.classifier(model.phi(model.backbone(x))).squeeze(-1)
    torch.testing.assert_close(model(x), manual)
    assert isinstance(model, Detector)
