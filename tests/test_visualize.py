"""Grad-CAM (csdfd/visualize.py): the layer chosen from the timm model, heatmaps equal to
Grad-CAM computed directly on that layer, for a CNN and a ViT backbone; the PNG panels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from csdfd import visualize as V
from csdfd.models import Detector

captum = pytest.importorskip("captum", reason="Grad-CAM needs captum: pip install captum")


def detector(name: str, size: int, **kw) -> Detector:
    torch.manual_seed(0)
    backbone = timm.create_model(name, num_classes=0, **kw)
    with torch.no_grad():
        dim = backbone(torch.zeros(1, 3, size, size)).shape[-1]
    return Detector(backbone, dim, proj_depth=1, proj_width=16).eval()


def crops(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("size, layer", [(64, "blocks.3"), (128, "blocks.4"), (33, "blocks.2")])
def test_cnn_layer_is_the_last_stage_with_a_4x4_grid(size, layer):
    model = detector("test_efficientnet", size)
    got = V.target_layer(model, size)
    assert (got.name, got.layout) == (layer, "nchw") and min(got.grid) >= V.MIN_GRID
    assert V.target_layer(model, size, "blocks.1").name == "blocks.1"
    with pytest.raises(ValueError, match="not a module of the backbone"):
        V.target_layer(model, size, "nope")


@pytest.mark.parametrize("size", [64, 47])
def test_cnn_heatmap_is_captum_gradcam_of_that_layer(size):
    from captum.attr import LayerAttribution, LayerGradCam

    model = detector("test_efficientnet", size)
    images = crops(3, size)
    cam = V.GradCam(model, size)
    got = cam(images)
    x = V.to_input(images, *V.normalisation(model), torch.device("cpu"))
    layer = model.backbone.get_submodule(cam.layer.name)
    want = LayerGradCam(model, layer).attribute(x, relu_attributions=True)
    want = LayerAttribution.interpolate(want, (size, size), "bilinear")[:, 0].detach()
    want = want / want.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    assert got.shape == (3, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert (got.reshape(3, -1).max(1) == pytest.approx(1.0)) or (got == 0).all()


@pytest.mark.parametrize("size", [32, 64])
def test_vit_heatmap_is_gradcam_of_the_token_grid(size):
    """Tokens entering the last block, laid out on the patch grid: the weights are the mean
    gradient of the fake logit per channel over the patches (Grad-CAM's alpha)."""
    model = detector("test_vit", size, img_size=size)
    cam = V.GradCam(model, size)
    side = size // 16
    assert (cam.layer.layout, cam.layer.grid, cam.layer.prefix) == ("tokens", (side, side), 1)
    images = crops(2, size)
    got = cam(images)
    saved = {}
    block = model.backbone.blocks[-1]
    hook = block.register_forward_pre_hook(lambda m, a: saved.setdefault("a", a[0]))
    x = V.to_input(images, *V.normalisation(model), torch.device("cpu"))
    logit = model(x)
    hook.remove()
    acts = saved["a"][:, 1:]  # patch tokens [N, T, C], row-major over the grid
    grads = torch.autograd.grad(logit.sum(), saved["a"])[0][:, 1:]
    raw = F.relu((acts * grads.mean(1, keepdim=True)).sum(-1)).reshape(2, 1, side, side)
    want = F.interpolate(raw, (size, size), mode="bilinear", align_corners=False)[:, 0]
    want = want / want.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5)
    assert (got > 0).any()  # the last block's input still reaches the class token


def test_channels_last_stages_are_permuted():
    layer = V._layout("layers.3", (1, 8, 8, 96), (1, 4, 4, 96), 0, 128,
                      [{"module": "layers.3", "num_chs": 96, "reduction": 32}])
    assert (layer.layout, layer.grid) == ("nhwc", (4, 4))


def test_panel_and_overlay():
    crop = crops(1, 40)[0]
    heat = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    over = V.overlay(crop, heat)
    assert over.shape == crop.shape and over.dtype == np.uint8 and not np.array_equal(over, crop)
    pic = V.panel([(crop, heat, "face 1"), (crop, heat, "face 2")], "title", side=64)
    assert pic.shape == (28 + 2 * (24 + 64), 128, 3)


def test_vit_checkpoint_through_predict(tmp_path):
    """--cam with a ViT checkpoint (test_vit at timm's own 160 px) on a real photo."""
    pytest.importorskip("dlib", reason="dlib is not installed: pip install 'csdfd[data]'")
    from realfaces import photo

    from csdfd import predict as PR
    from csdfd.checkpoint import save_checkpoint
    from csdfd.config import resolve
    from csdfd.models import build_model

    cfg = resolve({"backbone": "test_vit", "img_size": 160, "proj_width": 16})
    ckpt = save_checkpoint({"config": cfg.to_dict(), "model": build_model(cfg).state_dict()},
                           tmp_path / "vit.pt")
    image = tmp_path / "grace.png"
    cv2.imwrite(str(image), cv2.cvtColor(photo("grace_hopper"), cv2.COLOR_RGB2BGR))
    assert PR.main([str(ckpt), str(image), "--cam", str(tmp_path / "cams"), "--workers", "0",
                    "--json", str(tmp_path / "o.json"), "--quiet"]) == 0
    (record,) = json.loads((tmp_path / "o.json").read_text())
    assert record["status"] == "ok"
    pic = cv2.imread(str(tmp_path / "cams" / "grace.cam.png"))
    assert pic.shape == (28 + 24 + 192, 384, 3)
