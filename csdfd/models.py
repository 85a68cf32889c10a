"""The detector: a timm backbone, the CGR projection layer phi, and a one-logit classifier.

Paper section IV-C (eqs. 17-18): features ``f = backbone(x)``, projected ``f_hat = phi(f)`` by
"several linear layers" whose parameters theta_p are trained with the CGR gradient (eq. 24),
then ``logit = classifier(f_hat)``. Everything else (backbone and classifier) is theta, updated
with the UVS vector (eq. 14). Prediction is the plain forward pass.

Use :func:`build_model` to make one from a :class:`~csdfd.config.Config`, and
:func:`csdfd.checkpoint.load_model` to restore a trained one for inference. Models built for one
input size (ViT and its kin) are built at ``cfg.img_size``; where the backbone's starting weights
come from (``--weights``, timm's ``--pretrained``) is :mod:`csdfd.weights`'s business.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from .weights import load_weights, pretrained_file, pretrained_source, unavailable

_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class Detector(nn.Module):
    """Backbone -> phi -> classifier; ``forward`` returns one real/fake logit per image."""

    def __init__(self, backbone: nn.Module, feat_dim: int, proj_depth: int = 2,
                 proj_width: int = 512, proj_act: str = "gelu", drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        layers: list[nn.Module] = []
        width = feat_dim
        for i in range(proj_depth):  # Linear (act Linear)*: no activation after the last layer
            if i > 0:
                layers.append(_ACTS[proj_act]())
            layers.append(nn.Linear(width, proj_width))
            width = proj_width
        self.phi = nn.Sequential(*layers)  # empty Sequential = identity when proj_depth == 0
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Features -> phi -> classifier: one logit per row (eqs. 17-18)."""
        return self.classifier(self.dropout(self.phi(f))).squeeze(-1)

    def theta(self) -> list[tuple[str, nn.Parameter]]:
        """UVS parameters theta: backbone and classifier (everything but phi)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("phi.")]

    def theta_p(self) -> list[tuple[str, nn.Parameter]]:
        """CGR parameters theta_p: the projection layer phi."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith("phi.")]


def check_backbone(name: str) -> None:
    """Raise ValueError for a name timm does not know, listing close matches."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    raise ValueError(
        f"unknown backbone {name!r} ({hint}); any name from timm.list_models() works"
    )


def _size_kwargs(name: str, img_size: int) -> dict:
    """``img_size`` for the timm models built for one input size (ViT, DeiT, Swin, BEiT, EVA, ...:
    their pretrained config says ``fixed_input_size``), when it differs from their default.
    CNNs take any size and never get it (their constructors reject the argument)."""
    pcfg = get_pretrained_cfg(name)
    if pcfg is None or not pcfg.fixed_input_size or tuple(pcfg.input_size[-2:]) == (img_size,) * 2:
        return {}
    return {"img_size": img_size}


def _create(name: str, img_size: int, pretrained: bool = False) -> nn.Module:
    """``timm.create_model`` without a classifier head (``num_classes=0``), at ``img_size``."""
    kwargs = {"num_classes": 0, "pretrained": pretrained, **_size_kwargs(name, img_size)}
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
        default = get_pretrained_cfg(name).input_size[-1]
        raise ValueError(f"backbone {name!r} takes only {default}x{default} inputs; set "
                         f"--img-size {default} (got {img_size})") from exc


def _weights_file(cfg) -> Path | None:
    """The local file the backbone starts from: ``--weights``, or timm's ``--pretrained``
    weights already in the cache; None for random weights or a download by timm."""
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} (--weights) does not exist")
        return path
    if cfg.pretrained:
        cached = pretrained_file(cfg.backbone)  # raises at once if only the network has them
        return None if cached is None else Path(cached)
    return None


def _backbone(cfg) -> nn.Module:
    """The timm backbone, from ``--weights``, timm's ``--pretrained`` weights, or at random."""
    check_backbone(cfg.backbone)
    path = _weights_file(cfg)
    if path is None and cfg.pretrained:  # not cached, and the server answers: timm downloads
        try:
            backbone = _create(cfg.backbone, cfg.img_size, pretrained=True)
        except OSError as exc:  # huggingface_hub's and urllib's errors are OSErrors
            raise RuntimeError(unavailable(cfg.backbone, f"the download failed ({exc})")) \
                from exc
        print(f"backbone {cfg.backbone}: timm's pretrained weights "
              f"({pretrained_source(cfg.backbone)})", file=sys.stderr)
        return backbone
    backbone = _create(cfg.backbone, cfg.img_size)
    if path is not None:
        print(load_weights(backbone, path, cfg.backbone), file=sys.stderr)
    return backbone


@torch.no_grad()
def _feature_dim(backbone: nn.Module, img_size: int) -> int:
    """Width of the pooled features (timm's ``num_features`` is not always the output width)."""
    was_training = backbone.training
    backbone.eval()
    dim = backbone(torch.zeros(1, 3, img_size, img_size)).shape[-1]
    backbone.train(was_training)
    return int(dim)


def build_model(cfg) -> Detector:
    """The detector described by ``cfg`` (backbone, pretrained/weights, phi size), on CPU."""
    backbone = _backbone(cfg)
    return Detector(backbone, _feature_dim(backbone, cfg.img_size), cfg.proj_depth,
                    cfg.proj_width, cfg.proj_act, cfg.drop_rate)


def compile_backbone(model: Detector) -> None:
    """``torch.compile`` the backbone's forward in place (its state_dict keys do not change).

    Donated buffers are turned off: a compiled backward that donates its saved buffers refuses
    ``retain_graph=True``, and two-pass stream gradients (or OS alternating one plain backward
    with two) run the backward of one compiled graph twice."""
    if hasattr(torch, "_functorch") and hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False
    model.backbone.compile()


def normalisation(model: Detector) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std the backbone expects (timm's pretrained config; ImageNet's if unset)."""
    pcfg = getattr(model.backbone, "pretrained_cfg", None) or {}
    return (tuple(pcfg.get("mean", (0.485, 0.456, 0.406))),
            tuple(pcfg.get("std", (0.229, 0.224, 0.225))))
