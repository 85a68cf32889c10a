"""Small helpers of the training loop (csdfd.trainer): Ctrl-C handling, device choice, fused
buffer copies, the gradient norm of single-stream modes."""

from __future__ import annotations

import signal
import threading

import torch


class GracefulStop:
    """First Ctrl-C: finish the current step, save last.pt, return. Second: stop at once."""

    def __enter__(self) -> GracefulStop:
        self.requested = False
        self.prev = None
        if threading.current_thread() is threading.main_thread():
            self.prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self.prev)
        print("\nCtrl-C: saving a checkpoint after this step (press again to abort)", flush=True)

    def __exit__(self, *exc) -> None:
        if self.prev is not None:
            signal.signal(signal.SIGINT, self.prev)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def copy_(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """dst[i] <- src[i] for all i (one fused multi-tensor copy where torch has it); nothing
    for empty lists (a model without buffers, e.g. a ViT)."""
    if not dst:
        return
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)


def total_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
