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


def test_availability_of_one_backend_by_name(monkeypatch):
    """README: ops.availability('cuda') maps every backend (a device); a backend name that is
    not a device ('triton') answers for that backend, as a string, never a torch device error."""
    assert set(ops.availability("cuda")) == set(dispatch.ALL)
    for name in ("reference", "cpp"):
        assert ops.availability(name) == ops.availability("cpu")[name]
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors then run through the interpreter
    assert ops.availability("triton") == ops.availability("cpu")["triton"]
    monkeypatch.delenv("TRITON_INTERPRET")
    why = ops.availability("triton")
    if torch.cuda.is_available():
        assert why == ops.availability("cuda")["triton"]
    else:  # this CPU-only machine: why neither CPU nor CUDA tensors can use it
        assert "TRITON_INTERPRET" in why and "no CUDA device" in why, why
    with pytest.raises(ValueError, match=r"availability\('tpu'\).*backend name from"):
        ops.availability("tpu")
