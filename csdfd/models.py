"""The detector: a timm backbone, the CGR projection layer phi, and a one-logit classifier.

Paper section IV-C (eqs. 17-18): features ``f = backbone(x)``, projected ``f_hat = phi(f)`` by
"several linear layers" whose parameters theta_p are trained with the CGR gradient (eq. 24),
then ``logit = classifier(f_hat)``. Everything else (backbone and classifier) is theta, updated
with the UVS vector (eq. 14). Prediction is the plain forward pass.

Use :func:`build_model` to make one from a :class:`~csdfd.config.Config`, and
:func:`csdfd.checkpoint.load_model` to restore a trained one for inference.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

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
        f = self.backbone(x)
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


def _backbone(cfg) -> nn.Module:
    """timm model without its classifier head (``num_classes=0``), optionally with weights."""
    check_backbone(cfg.backbone)
    kwargs: dict = {"num_classes": 0, "pretrained": bool(cfg.pretrained)}
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} (--weights) does not exist")
        # timm's own loader: drops the classifier head, adapts input channels, reads
        # .safetensors / .pth / .bin.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    try:
        return timm.create_model(cfg.backbone, **kwargs)
    except RuntimeError as exc:
        if cfg.weights:
            raise RuntimeError(
                f"weights file {cfg.weights!r} does not fit backbone {cfg.backbone!r}: {exc}"
            ) from exc
        raise


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


def normalisation(model: Detector) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std the backbone expects (timm's pretrained config; ImageNet's if unset)."""
    pcfg = getattr(model.backbone, "pretrained_cfg", None) or {}
    return (tuple(pcfg.get("mean", (0.485, 0.456, 0.406))),
            tuple(pcfg.get("std", (0.229, 0.224, 0.225))))
