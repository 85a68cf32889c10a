"""Optimizer and learning-rate schedule of a training run.

The paper (section V-A) states neither, so these are our choices, set by Config fields:
``optimizer`` (AdamW by default, decoupled weight decay), ``lr`` as the peak rate, a linear
warmup over ``warmup`` of all steps, then cosine to 0 at the last step of ``epochs`` (or
constant). The optimizer steps on row 0 of the flat gradient buffer (csdfd.FlatGrads), which
every parameter's ``.grad`` views, so any torch optimizer works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import Config


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: Config, opt: torch.optim.Optimizer,
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule over ``total`` optimizer steps (see :func:`lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total))


def lr_factor(cfg: Config, total: int) -> Callable[[int], float]:
    """Step -> multiple of ``cfg.lr``: linear warmup over ``cfg.warmup`` of the steps, then
    cosine to 0 at step ``total`` (or constant)."""
    warm = int(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor
