"""Access to the compiled `sigma_fast._C` extension, with one clear warning when it is absent."""
import importlib
import warnings

import torch  # noqa: F401  (loads libc10 and libtorch, which _C links against)

try:
    _C = importlib.import_module("sigma_fast._C")
except ImportError as error:
    _C = None
    warnings.warn(
        f"sigma_fast._C is not available ({error}); the pure-PyTorch reference ops are used instead. "
        "Reinstall with `pip install --no-build-isolation .` after torch to build it.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_cpu_ops():
    return _C is not None


def has_cuda_ops():
    return _C is not None and getattr(_C, "with_cuda", False)
