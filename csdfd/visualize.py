"""What a detector looks at, and what it found: Grad-CAM heatmaps (the paper's Fig. 4), their
PNG panels, and videos annotated with face boxes and scores. Used by ``csdfd.predict``.

Grad-CAM (Selvaraju et al., ICCV 2017) weights a layer's feature maps by the spatial mean of
the gradient of the fake logit and keeps the positive part; captum's ``LayerGradCam``
computes it. The layer is chosen from the timm backbone (:func:`target_layer`):

- CNNs: the last feature stage timm reports (``feature_info``), e.g. ``blocks.6`` of
  EfficientNet-B4 or ``layer4`` of a ResNet; where the input is so small that its grid is
  under 4 x 4 cells (a 64-px model has 2 x 2 there), the last stage with at least 4 x 4;
- ViTs: the patch tokens entering the last block, reshaped to the patch grid (the last
  block's output tokens no longer reach the class token, so their gradient is zero);
- channels-last stages (Swin) are permuted to channels-first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .inference import to_input
from .models import normalisation

MIN_GRID = 4


class _Grid(nn.Module):
    """Identity on a [N, C, h, w] grid: the layer Grad-CAM attributes to."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass
class Layer:
    """Where Grad-CAM looks: a backbone module and how its tensor maps to a grid."""

    name: str  # module path inside the backbone
    layout: str  # "nchw", "nhwc" or "tokens" (the input of the module)
    grid: tuple[int, int]  # h, w at the model's input size
    prefix: int = 0  # class / register tokens before the patch tokens


def _probe(backbone: nn.Module, names: Sequence[str], size: int) -> dict[str, tuple]:
    """Output shape of each named module (input shape for token models) on one blank image."""
    shapes, hooks = {}, []

    def record(name: str):
        def hook(module, args, output) -> None:
            shapes.setdefault(name, (tuple(args[0].shape), tuple(output.shape)))
        return hook

    for name in names:
        hooks.append(backbone.get_submodule(name).register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            device = next(backbone.parameters()).device
            backbone(torch.zeros(1, 3, size, size, device=device))
            backbone.train(was)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def target_layer(model: nn.Module, img_size: int, name: str | None = None) -> Layer:
    """The Grad-CAM layer of ``model.backbone`` (see the module docstring); ``name`` forces a
    module (a path inside the backbone, e.g. ``blocks.5``)."""
    backbone = model.backbone
    info = list(getattr(backbone, "feature_info", None) or [])
    stages = [f["module"] for f in info] if name is None else [name]
    if not stages:
        raise ValueError(f"cannot choose a Grad-CAM layer for {type(backbone).__name__} (timm "
                         "gives no feature_info); pass --cam-layer NAME, a module of the "
                         "backbone")
    try:
        shapes = _probe(backbone, stages, img_size)
    except AttributeError as exc:
        raise ValueError(f"--cam-layer {name!r} is not a module of the backbone: {exc}") from exc
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
    layers = [_layout(n, *shapes[n], prefix, img_size, info) for n in stages if n in shapes]
    if not layers:
        raise ValueError(f"no Grad-CAM layer among {stages}: the forward pass does not use them")
    if name is not None or layers[-1].layout == "tokens":
        return layers[-1]
    big = [la for la in layers if min(la.grid) >= MIN_GRID]
    return big[-1] if big else layers[-1]


def _layout(name: str, shape_in: tuple, shape_out: tuple, prefix: int, size: int,
            info: list[dict]) -> Layer:
    chs = next((f["num_chs"] for f in info if f["module"] == name), None)
    if len(shape_out) == 4:
        nhwc = chs is not None and shape_out[-1] == chs and shape_out[1] != chs
        return Layer(name, "nhwc" if nhwc else "nchw",
                     tuple(shape_out[1:3]) if nhwc else tuple(shape_out[2:]))
    if len(shape_in) == 3:  # [N, prefix + h * w, C] tokens
        tokens = shape_in[1] - prefix
        side = math.isqrt(tokens)
        red = next((f.get("reduction") for f in info if f["module"] == name), None)
        h = size // red if red else side
        grid = (h, tokens // h) if h and tokens % h == 0 else (side, side)
        if grid[0] * grid[1] != tokens:
            raise ValueError(f"cannot lay the {tokens} tokens of {name} out on a grid")
        return Layer(name, "tokens", grid, prefix)
    raise ValueError(f"Grad-CAM needs a spatial layer; {name} gives shape {shape_out}")


class GradCam:
    """Grad-CAM heatmaps of the fake logit on model-input crops (captum's LayerGradCam)."""

    def __init__(self, model: nn.Module, img_size: int, layer: str | None = None):
        from captum.attr import LayerGradCam

        self.model, self.size = model, img_size
        self.layer = target_layer(model, img_size, layer)
        self.grid = _Grid()
        self.mean, self.std = normalisation(model)
        self.cam = LayerGradCam(model, self.grid)

    def _hook(self):
        module = self.model.backbone.get_submodule(self.layer.name)
        layer, grid = self.layer, self.grid
        if layer.layout == "nchw":
            return module.register_forward_hook(lambda m, i, o: grid(o))
        if layer.layout == "nhwc":
            return module.register_forward_hook(
                lambda m, i, o: grid(o.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))

        def tokens(m, args):
            x = args[0]
            head, body = x[:, :layer.prefix], x[:, layer.prefix:]
            n, t, c = body.shape
            g = grid(body.transpose(1, 2).reshape(n, c, *layer.grid))
            return (torch.cat([head, g.reshape(n, c, t).transpose(1, 2)], 1), *args[1:])

        return module.register_forward_pre_hook(tokens)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """[n, S, S, 3] uint8 model-input crops -> [n, S, S] float32 heatmaps in [0, 1]."""
        from captum.attr import LayerAttribution

        device = next(self.model.parameters()).device
        x = to_input(crops, self.mean, self.std, device)
        hook = self._hook()
        was = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                attr = self.cam.attribute(x, relu_attributions=True)
        finally:
            hook.remove()
            self.model.train(was)
        up = LayerAttribution.interpolate(attr.detach(), tuple(crops.shape[1:3]),
                                          interpolate_mode="bilinear")[:, 0].float().cpu()
        peak = up.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        return (up / peak).clamp(0, 1).numpy().astype(np.float32)


def overlay(crop: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB crop with the heatmap (jet colours) blended over it."""
    colour = cv2.applyColorMap(np.uint8(np.round(heat * 255)), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.round((1 - alpha) * crop + alpha * colour))


def panel(rows: Sequence[tuple[np.ndarray, np.ndarray, str]], title: str,
          side: int = 192) -> np.ndarray:
    """One RGB picture: the title, then per face its caption above [crop | heatmap overlay]."""
    font, white = cv2.FONT_HERSHEY_SIMPLEX, (255, 255, 255)

    def strip(text: str, width: int, height: int = 24, scale: float = 0.5) -> np.ndarray:
        out = np.full((height, width, 3), 32, np.uint8)
        cv2.putText(out, text, (6, height - 8), font, scale, white, 1, cv2.LINE_AA)
        return out

    width = 2 * side
    parts = [strip(title, width, 28, 0.45)]
    for crop, heat, caption in rows:
        big = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
        hot = cv2.resize(overlay(crop, heat), (side, side), interpolation=cv2.INTER_CUBIC)
        parts += [strip(caption, width), np.concatenate([big, hot], axis=1)]
    return np.concatenate(parts, axis=0)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB picture as PNG (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def annotate_video(src: Path, dst: Path, record: dict, threshold: float) -> int:
    """Copy video ``src`` to ``dst`` (mp4v) with the face boxes and scores of ``record`` (a
    ``csdfd.predict`` record) drawn on every frame: those of the nearest scored frame, so that
    boxes hold between the sampled frames. Returns the number of frames written."""
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise ValueError(f"--annotate: cannot open {src}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = [f for f in record["frames"]]
    marks = np.array([f["index"] for f in frames]) if frames else np.zeros(0, int)
    writer, n = None, 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if writer is None:
                dst.parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (bgr.shape[1], bgr.shape[0]))
            if len(marks):
                _draw(bgr, frames[int(np.abs(marks - n).argmin())], record, threshold)
            writer.write(bgr)
            n += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return n


def _draw(bgr: np.ndarray, frame: dict, record: dict, threshold: float) -> None:
    font, h = cv2.FONT_HERSHEY_SIMPLEX, bgr.shape[0]
    scale, thick = max(0.45, 0.8 * h / 720), max(1, round(2 * h / 720))
    for face in frame["faces"]:
        colour = (40, 40, 230) if face["score"] >= threshold else (60, 200, 60)  # BGR
        x0, y0, x1, y1 = (int(round(v)) for v in face["box"])
        cv2.rectangle(bgr, (x0, y0), (x1, y1), colour, thick + 1)
        cv2.putText(bgr, f"{face['score']:.2f}", (x0, max(y0 - 6, 14)), font, scale, colour,
                    thick, cv2.LINE_AA)
    video = record["score"]
    text = (f"frame {frame['index']}: " + ("no face" if frame["score"] is None
                                           else f"P(fake) {frame['score']:.2f}")
            + (f" | video {video:.2f} {'fake' if video >= threshold else 'real'}"
               if video is not None else ""))
    cv2.putText(bgr, text, (8, int(26 * scale) + 4), font, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
