"""Build script: installs csdfd, maps kernels/ to csdfd.kernels and builds csdfd._C from csrc/.

The extension is optional. It is skipped when CSDFD_SKIP_EXT=1, built as a CPU-only
CppExtension when torch has no CUDA or CSDFD_CPU_ONLY=1, and as a CUDAExtension otherwise.
Build with `pip install -e . --no-build-isolation` so it compiles against the installed torch.
"""

import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    """Return (ext_modules, cmdclass) for csdfd._C, or empty ones when it is not wanted."""
    if os.environ.get("CSDFD_SKIP_EXT") == "1":
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp:
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:  # torch absent: the package still installs, without the extension
        return [], {}
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    use_cuda = (
        os.environ.get("CSDFD_CPU_ONLY") != "1"
        and cpp_extension.CUDA_HOME is not None
        and getattr(__import__("torch").version, "cuda", None) is not None
        and bool(cu)
    )
    include = [os.path.join(HERE, "csrc")]
    if use_cuda:
        ext = cpp_extension.CUDAExtension(
            "csdfd._C",
            cpp + cu,
            include_dirs=include + _nvidia_includes(),
            define_macros=[("CSDFD_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "csdfd._C", cpp, include_dirs=include, extra_compile_args=cxx,
            extra_link_args=["-fopenmp"],
        )
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build}


def _nvidia_includes():
    """Headers of the pip-installed CUDA runtime (site-packages/nvidia/cu*/include), if present."""
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
