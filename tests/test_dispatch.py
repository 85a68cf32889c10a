"""Backend policy (csdfd.ops.dispatch) and how the package finds its Triton sources."""

import warnings
from pathlib import Path

import pytest
import torch

from csdfd import ops
from csdfd.ops import dispatch


def test_reference_is_always_available():
    assert "reference" in ops.backends()
    assert "reference" in ops.backends("cpu")
    assert ops.availability("cpu")["reference"] == ""


def test_every_unavailable_backend_says_why():
    for device in ("cpu", "cuda"):
        for name, why in ops.availability(device).items():
            assert name in dispatch.ALL
            assert why == "" or len(why) > 10, (name, device, why)


def test_explicit_unavailable_backend_lists_the_available_ones():
    with pytest.raises(RuntimeError, match=r"'cuda' is unavailable.*Available: \["):
        dispatch.resolve("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        dispatch.resolve("fast", torch.device("cpu"))


def test_auto_picks_the_first_usable_backend_and_warns_once_on_downgrade(monkeypatch):
    monkeypatch.setattr(dispatch, "PREFERENCE", {"cpu": ("cuda", "reference")})
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="using 'reference'"):
        assert dispatch.resolve("auto", torch.device("cpu")) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve("auto", torch.device("cpu")) == "reference"  # silent now


def test_auto_on_cpu_prefers_the_extension_when_built():
    want = "cpp" if "cpp" in ops.backends("cpu") else "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert dispatch.resolve("auto", torch.device("cpu")) == want


def test_kernels_folder_is_installed_as_csdfd_kernels():
    """setup.py / pyproject map the top-level kernels/ folder to the subpackage csdfd.kernels."""
    pytest.importorskip("triton")
    import csdfd.kernels.uvs_cgr as k

    folder = Path(k.__file__).resolve().parent
    assert k.__name__ == "csdfd.kernels.uvs_cgr" and folder.name == "kernels"
    assert (folder / "solve_mu.py").exists()
    # editable install: the top-level kernels/ beside csdfd/; wheel: csdfd/kernels/
    assert folder.parent in (Path(ops.__file__).resolve().parents[2],
                             Path(ops.__file__).resolve().parents[1])
