"""Builds the optional `sigma_fast._C` extension from `csrc/`.

The C++ CPU ops (`csrc/*.cpp`) are built wherever torch is importable at build time; the CUDA ops
(`csrc/cuda/*.cu`, `csrc/cuda/*.cpp`) are added when torch is a CUDA build and a CUDA toolkit is
found. Without torch in the build environment (pip's default build isolation), the package installs
as pure Python and falls back to the PyTorch references: install with `--no-build-isolation`.
"""
import glob
import os

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0a"


def _say(message):
    print(f"sigma_fast setup: {message}", flush=True)


def _extension_setup():
    if os.environ.get("SIGMA_FAST_NO_EXT") == "1":
        _say("SIGMA_FAST_NO_EXT=1, building no extension (PyTorch references only)")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _say("torch is not importable in the build environment, so sigma_fast._C is skipped; "
             "install torch first and use `pip install --no-build-isolation .` to build it")
        return {}

    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    if not cpu_sources:
        _say("no C++ sources in csrc/, building no extension")
        return {}

    # No -std flag: torch adds the C++ standard its headers need (C++20 for torch >= 2.10).
    cxx_flags = ["-O3", "-fopenmp"]
    define_macros = []
    want_cuda = os.environ.get("SIGMA_FAST_CUDA", "auto")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and cuda_sources
    if want_cuda == "0":
        has_cuda = False
        _say("SIGMA_FAST_CUDA=0, skipping the CUDA ops")
    elif not has_cuda:
        why = ("torch is a CPU build" if torch.version.cuda is None
               else "no CUDA toolkit found (set CUDA_HOME)" if cpp_extension.CUDA_HOME is None
               else "no CUDA sources")
        if want_cuda == "1":
            raise RuntimeError(f"SIGMA_FAST_CUDA=1 but the CUDA ops cannot be built: {why}")
        _say(f"skipping the CUDA ops ({why}); building the C++ CPU ops only")

    if has_cuda:
        nvcc_flags = ["-O3"]
        # CI (.ci/cuda_build.sh) reads ptxas's registers and spills per kernel from the build log.
        if os.environ.get("SIGMA_FAST_PTXAS_VERBOSE") == "1":
            nvcc_flags += ["-Xptxas", "-v"]
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        _say(f"building the CUDA ops for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        include_dirs = [os.path.abspath("csrc")]
        # pip's CUDA wheels of torch ship the CUDA headers here rather than in the toolkit.
        include_dirs += glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))
        ext = cpp_extension.CUDAExtension(
            "sigma_fast._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=define_macros + [("WITH_CUDA", None)],
            # No --use_fast_math: the kernels are memory-bound, and exact expf/division keep them
            # bit-compatible with the PyTorch references (masks are compared exactly).
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "sigma_fast._C",
            cpu_sources,
            include_dirs=[os.path.abspath("csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}}


setup(**_extension_setup())
