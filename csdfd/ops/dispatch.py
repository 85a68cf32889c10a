"""Backend policy, in one place: which implementations exist, which run here, which to pick.

Backends: ``reference`` (pure torch, the specification), ``triton`` (kernels/ compiled by
Triton; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for testing), ``cpp`` (csdfd._C on
CPU tensors), ``cuda`` (csdfd._C on CUDA tensors). ``auto`` picks the fastest one usable for the
tensor's device and warns once if that is a downgrade. An explicitly named backend that cannot run
raises an error listing the ones that can.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import cache
from types import ModuleType

import torch

ALL = ("reference", "triton", "cpp", "cuda")
#: Preference of ``auto`` per device type, fastest first (measured in bench/).
PREFERENCE = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}

_MODULES = {
    "reference": "csdfd.ops.reference",
    "triton": "csdfd.ops.triton_backend",
    "cpp": "csdfd.ops.ext_backend",
    "cuda": "csdfd.ops.ext_backend",
}
_warned: set[str] = set()


@cache
def _load(name: str) -> tuple[ModuleType | None, str]:
    """Import a backend module once; returns (module, "") or (None, reason)."""
    try:
        module = importlib.import_module(_MODULES[name])
    except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable
        return None, f"{type(exc).__name__}: {exc}"
    reason = getattr(module, "unavailable_reason", lambda _n: "")(name)
    return (None, reason) if reason else (module, "")


def _device_ok(name: str, device_type: str) -> str:
    """Why backend ``name`` cannot run on ``device_type`` tensors ("" if it can)."""
    if name == "reference":
        return ""
    if name == "cpp" and device_type != "cpu":
        return "cpp runs on CPU tensors; use 'cuda' or 'triton' for CUDA tensors"
    if name == "cuda" and device_type != "cuda":
        return "cuda runs on CUDA tensors; use 'cpp' for CPU tensors"
    if name == "triton" and device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on CUDA tensors (CPU only under TRITON_INTERPRET=1, for tests)"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return ""


def availability(device: str | torch.device = "cpu") -> dict[str, str] | str:
    """Map every backend to "" if it can run on ``device`` tensors, else to the reason it cannot.

    Given a backend name that is not also a device type (``"reference"``, ``"triton"``,
    ``"cpp"``), the answer for that one backend as a string: "" if it runs here on CPU or CUDA
    tensors, else why not. (``"cuda"`` is a device, so it gets the map for CUDA tensors.)
    """
    try:
        device_type = torch.device(device).type
    except (RuntimeError, TypeError):  # torch's own "Expected one of cpu, cuda, ..." error
        if device in ALL:
            return _backend_reason(device)
        raise ValueError(f"availability({device!r}): give a device ('cpu', 'cuda', 'cuda:1') "
                         f"or a backend name from {list(ALL)}") from None
    out = {}
    for name in ALL:
        reason = _device_ok(name, device_type)
        out[name] = reason or _load(name)[1]
    return out


def _backend_reason(name: str) -> str:
    """"" if backend ``name`` runs on CPU or CUDA tensors here, else the reasons for both."""
    reasons = {d: availability(d)[name] for d in ("cpu", "cuda")}
    if not all(reasons.values()):
        return ""
    if len(set(reasons.values())) == 1:
        return reasons["cpu"]
    return "; ".join(f"{d} tensors: {why}" for d, why in reasons.items())


def backends(device: str | torch.device | None = None) -> list[str]:
    """Backends usable on this machine (for ``device`` tensors if given, else on any device)."""
    if device is not None:
        return [n for n, why in availability(device).items() if not why]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    usable = {n for d in devices for n in backends(d)}
    return [n for n in ALL if n in usable]


def resolve(backend: str, device: torch.device) -> str:
    """Turn a requested backend name (or "auto") into one that runs on ``device`` tensors."""
    avail = availability(device)
    if backend == "auto":
        prefs = PREFERENCE.get(device.type, ("reference",))
        chosen = next(n for n in prefs if not avail[n])
        if chosen != prefs[0] and device.type not in _warned:
            _warned.add(device.type)
            skipped = "; ".join(f"{n}: {avail[n]}" for n in prefs[: prefs.index(chosen)])
            warnings.warn(
                f"csdfd: fastest backend for {device.type} unavailable ({skipped}); "
                f"using {chosen!r}",
                RuntimeWarning,
                stacklevel=3,
            )
        return chosen
    if backend not in ALL:
        raise ValueError(f"unknown backend {backend!r}; known: {list(ALL)} or 'auto'")
    if avail[backend]:
        usable = [n for n, why in avail.items() if not why]
        raise RuntimeError(
            f"backend {backend!r} is unavailable for {device.type} tensors: {avail[backend]}. "
            f"Available: {usable}"
        )
    return backend


_RESOLVED: dict[tuple[str, str], ModuleType] = {}


def get(backend: str, device: torch.device) -> ModuleType:
    """The implementation module for ``backend`` (or "auto") on ``device`` tensors.

    Resolved once per (backend, device type) and kept in a plain dict, so after one eager call
    torch.compile traces through this lookup (Dynamo cannot trace importlib).
    """
    key = (backend, device.type)
    module = _RESOLVED.get(key)
    if module is None:
        module = _RESOLVED[key] = _load(resolve(backend, device))[0]
    return module
