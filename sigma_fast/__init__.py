"""sigma_fast: pixel masks of what a text-driven image edit changed (SIGMA, fast).

    import sigma_fast
    results = sigma_fast.annotate_batch(originals, editeds, instructions)

Heavy submodules (transformers, the model) are imported on first use.
"""
import importlib

from sigma_fast import _ext  # noqa: F401  (warns once when the compiled ops are absent)

__version__ = "0.1.0"

_LAZY = {
    "Annotation": "sigma_fast.annotate",
    "Annotator": "sigma_fast.annotate",
    "annotate_batch": "sigma_fast.annotate",
    "SigmaConfig": "sigma_fast.config",
    "SigmaModel": "sigma_fast.model",
    "EditTuple": "sigma_fast.grounding",
    "parse_instruction": "sigma_fast.grounding",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sigma_fast' has no attribute {name!r}")
