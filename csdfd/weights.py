"""Starting weights of the backbone: a local file (``--weights``) or timm's pretrained weights
(``--pretrained``), found without waiting on a network that is not there.

timm's ``create_model(pretrained=True)`` reaches the weights through ``build_model_with_cfg`` ->
``load_pretrained`` -> ``load_state_dict_from_hf`` -> ``huggingface_hub.hf_hub_download``
(``model.safetensors``, then ``pytorch_model.bin``), or ``torch.hub`` for the few URL-only
models. Without network, huggingface_hub retries with back-off for about a minute and then
raises ``LocalEntryNotFoundError`` ("cannot find the requested files in the local cache").
Here instead: weights already in the cache are read from it with no network call at all;
with ``HF_HUB_OFFLINE`` set nothing is tried; otherwise one request without retries checks that
the server answers before timm downloads. Every failure names ``--weights PATH``.

A local file goes through the model family's own timm filter (``checkpoint_filter_fn``: it
resamples a ViT's position embedding to the input size, for one) and must then fill every
tensor of the backbone; tensors it has beyond those (a classifier head) are left out, and
the one-line report says how many matched.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants
from timm.models import get_pretrained_cfg, load_state_dict, model_entrypoint
from torch import nn

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean variable
#: timm's hub file and the safetensors file it prefers when the repository has one
_SAFE = {"pytorch_model.bin": "model.safetensors",
         "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def _some(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _filter(name: str, state: dict, backbone: nn.Module) -> dict:
    """The family's timm checkpoint filter (the one timm applies to its own pretrained weights:
    position-embedding resampling, patch-embedding resizing, key renames), where it has one."""
    fn = getattr(sys.modules[model_entrypoint(name).__module__], "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(state, backbone)
    except Exception:  # noqa: BLE001 - a filter may choke on a foreign file; matching will tell
        return state


def load_weights(backbone: nn.Module, path: Path, name: str) -> str:
    """Load the state dict in ``path`` (.safetensors, .pth, .bin; a ``state_dict``/``model``
    entry is unwrapped) into ``backbone``; returns the line that says what was loaded.

    Raises RuntimeError if the file cannot be read, matches none of the backbone's tensors, or
    leaves some of them unfilled (missing, or of another shape)."""
    try:
        raw = load_state_dict(str(path))
    except Exception as exc:  # noqa: BLE001 - pickle, zip and safetensors errors differ
        raise RuntimeError(f"weights file {str(path)!r} is not a torch or "
                           f"safetensors state dict: {exc}") from exc
    state = {k: v for k, v in _filter(name, raw, backbone).items() if torch.is_tensor(v)}
    own = backbone.state_dict()
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    params = dict(backbone.named_parameters())
    if not any(k in params for k in fits):  # buffers such as num_batches_tracked fit anything
        raise RuntimeError(
            f"weights file {str(path)!r} matches none of the {len(params)} parameters of "
            f"backbone {name!r} (its keys: {_some(state)}; the backbone's: {_some(own)}); pass "
            f"weights of this timm model")
    missing = [k for k in own if k not in fits]
    if missing:
        absent = [k for k in missing if k not in state]
        shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in missing if k in state]
        why = [f"{len(absent)} missing ({_some(absent)})"] if absent else []
        why += [f"{len(shaped)} of another shape ({_some(shaped)})"] if shaped else []
        raise RuntimeError(
            f"weights file {str(path)!r} does not fit backbone {name!r}: {len(fits)} of its "
            f"{len(own)} tensors match; {', '.join(why)}")
    backbone.load_state_dict(fits)
    unused = [k for k in state if k not in fits]
    note = f" ({len(unused)} more in the file left out: {_some(unused)})" if unused else ""
    return f"backbone {name}: loaded {len(fits)} of {len(own)} tensors from {path}{note}"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), as huggingface_hub read it at import
    or as set since."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(hf_constants.HF_HUB_OFFLINE) or env.upper() in _TRUE


def _hub(name: str) -> tuple[str, str | None] | None:
    pcfg = get_pretrained_cfg(name)
    if pcfg is None or not pcfg.hf_hub_id:
        return None
    repo, _, revision = pcfg.hf_hub_id.partition("@")
    return repo, revision or None


def pretrained_source(name: str) -> str:
    """Where timm downloads ``name``'s pretrained weights from (a hub repository or a URL)."""
    pcfg = get_pretrained_cfg(name)
    hub = _hub(name)
    if hub is not None:
        return f"{hf_constants.ENDPOINT}/{hub[0]}"
    if pcfg is None or not pcfg.url:
        raise ValueError(f"timm has no pretrained weights for backbone {name!r}; drop "
                         f"--pretrained, or pass a local file with --weights PATH")
    return pcfg.url


def _cached(name: str) -> str | None:
    """The already downloaded weights file, in the Hugging Face cache (or torch hub's)."""
    hub = _hub(name)
    if hub is None:
        url = get_pretrained_cfg(name).url
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        return str(path) if path.is_file() else None
    fname = get_pretrained_cfg(name).hf_hub_filename or "pytorch_model.bin"
    safe = _SAFE.get(fname, fname[:-4] + ".safetensors" if fname.endswith(".bin") else fname)
    for candidate in dict.fromkeys((safe, fname)):  # timm's order: safetensors first
        got = huggingface_hub.try_to_load_from_cache(hub[0], candidate, revision=hub[1])
        if isinstance(got, str):
            return got
    return None


def _unreachable(name: str) -> str | None:
    """Why the weights' server does not answer, from one request without retries; None if it
    answers (with any HTTP status: what follows is timm's download)."""
    hub = _hub(name)
    try:
        if hub is not None:
            url = huggingface_hub.hf_hub_url(hub[0], "config.json", revision=hub[1])
            huggingface_hub.get_hf_file_metadata(url, timeout=hf_constants.HF_HUB_ETAG_TIMEOUT)
        else:
            request = urllib.request.Request(get_pretrained_cfg(name).url, method="HEAD")
            urllib.request.urlopen(request, timeout=hf_constants.HF_HUB_ETAG_TIMEOUT).close()
    except (huggingface_hub.errors.HfHubHTTPError, urllib.error.HTTPError):
        return None
    except Exception as exc:  # noqa: BLE001 - DNS, refused, timeout, proxy, TLS: all unreachable
        return f"{urlparse(pretrained_source(name)).netloc} cannot be reached " \
               f"({type(exc).__name__}: {exc})"
    return None


def unavailable(name: str, why: str) -> str:
    """The error for --pretrained weights that cannot be had: why, and the two ways out."""
    return (f"--pretrained: timm's weights for backbone {name!r} ({pretrained_source(name)}) "
            f"are not in the local cache and {why}. Run once with network access (they are "
            f"then cached in {hf_constants.HF_HUB_CACHE}), or pass a local file with "
            f"--weights PATH (a timm/torch state dict or .safetensors of {name!r})")


def pretrained_file(name: str) -> str | None:
    """Local path of ``name``'s timm pretrained weights if they are already downloaded; None
    if the server answers, so timm can download them; RuntimeError at once otherwise (offline
    mode, or no network), never after huggingface_hub's retries."""
    pretrained_source(name)  # no pretrained weights at all: say so first
    cached = _cached(name)
    if cached is not None:
        return cached
    if offline():
        raise RuntimeError(unavailable(name, "HF_HUB_OFFLINE is set, so nothing is downloaded"))
    why = _unreachable(name)
    if why is not None:
        raise RuntimeError(unavailable(name, why))
    return None
