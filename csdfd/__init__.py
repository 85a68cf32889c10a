"""csdfd: CS-DFD (UVS + CGR) deepfake-detector training with fused gradient kernels."""

from .flatgrads import FlatGrads

__version__ = "0.1.0"
__all__ = ["FlatGrads", "__version__"]
