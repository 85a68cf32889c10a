"""csdfd: CS-DFD (UVS + CGR) deepfake-detector training with fused gradient kernels."""

__version__ = "0.1.0"
__all__ = ["FlatGrads", "StreamGrads", "__version__"]


def __getattr__(name: str):
    """``csdfd.FlatGrads`` and ``csdfd.StreamGrads`` on first use, so that importing a csdfd
    module that needs no torch (the workers of csdfd.predict) does not import torch."""
    if name == "FlatGrads":
        from .flatgrads import FlatGrads

        return FlatGrads
    if name == "StreamGrads":
        from .streamgrads import StreamGrads

        return StreamGrads
    raise AttributeError(f"module 'csdfd' has no attribute {name!r}")
