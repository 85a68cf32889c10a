"""Build script: installs csdfd, maps kernels/ to csdfd.kernels and builds csdfd._C from csrc/.

The extension is optional. It is skipped when CSDFD_SKIP_EXT=1, built as a CPU-only
CppExtension when torch has no CUDA, no CUDA toolkit is found or CSDFD_CPU_ONLY=1, and as a
CUDAExtension otherwise (TORCH_CUDA_ARCH_LIST defaults to the visible GPUs, or to 9.0+PTX when
none is visible). Build with `pip install -e . --no-build-isolation` so it compiles against the
installed torch; ninja compiles the sources in parallel (MAX_JOBS limits it).
"""

import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
#: Architecture compiled when no GPU is visible at build time (CI, CPU-only build machines).
DEFAULT_ARCH = "9.0+PTX"
#: Build modes, as reported by csdfd._C.BUILD_MODE (see csrc/ops.cpp).
CUDA, CPU_REQUESTED, CPU_TORCH, CPU_TOOLKIT = 1, 2, 3, 4
_TOOLKIT_FILES = (("bin", "nvcc"), ("include", "cuda_runtime.h"))


def _cuda_home():
    """The CUDA toolkit root, or None. Like torch's own guess (CUDA_HOME, CUDA_PATH, then the
    nvcc on PATH), but an nvcc reached through a wrapper script (/usr/local/bin/nvcc) does not
    reveal the toolkit, so fall back to /usr/local/cuda when the guess has no bin/nvcc."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home:
            return home
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if all(os.path.exists(os.path.join(home, *f)) for f in _TOOLKIT_FILES):
            return home
    return None


def _build_mode(torch):
    """CUDA or the reason the build is CPU-only."""
    if os.environ.get("CSDFD_CPU_ONLY") == "1":
        return CPU_REQUESTED
    if getattr(torch.version, "cuda", None) is None:
        return CPU_TORCH
    return CUDA if _cuda_home() else CPU_TOOLKIT


def _extensions():
    """Return (ext_modules, cmdclass) for csdfd._C, or empty ones when it is not wanted."""
    if os.environ.get("CSDFD_SKIP_EXT") == "1":
        return [], {}
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    try:
        import torch
    except ImportError:  # torch absent: the package still installs, without the extension
        return [], {}
    mode = _build_mode(torch)
    if mode == CUDA:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME then.
        os.environ.setdefault("CUDA_HOME", _cuda_home())
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.device_count():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH
    from torch.utils import cpp_extension

    include = [os.path.join(HERE, "csrc")]
    # -fno-trapping-math (clang's default) lets GCC vectorise the branch-free float16 / bfloat16
    # conversions in csrc/cpu/convert.h; it changes no result (no reassociation, no flush-to-zero).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    # -isystem: searched after the toolkit's own include dir, so these only fill its gaps.
    system = [f for d in _nvidia_includes() for f in ("-isystem", d)] if mode == CUDA else []
    macros = [("CSDFD_BUILD_MODE", str(mode))]
    if mode == CUDA:
        ext = cpp_extension.CUDAExtension(
            "csdfd._C",
            cpp + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include,
            define_macros=macros + [("CSDFD_WITH_CUDA", "1")],
            # No --use_fast_math: the mu solver must round like the reference (IEEE div/sqrt,
            # no flush-to-zero).
            extra_compile_args={"cxx": cxx + system, "nvcc": ["-O3"] + system},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "csdfd._C", cpp, include_dirs=include, define_macros=macros,
            extra_compile_args=cxx, extra_link_args=["-fopenmp"],
        )
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build}


def _nvidia_includes():
    """Headers of the pip-installed CUDA libraries (site-packages/nvidia/cu*/include), which
    torch's CUDA headers include (cublas, cusparse, ...) when the toolkit lacks them."""
    try:
        import nvidia  # namespace package shipped by torch's CUDA wheels
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(root, "cu*", "include")))
    return found


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["csdfd", "csdfd.*"]) + ["csdfd.kernels"],
    package_dir={"csdfd": "csdfd", "csdfd.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
