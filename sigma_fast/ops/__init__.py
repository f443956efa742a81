"""Pre/post-processing ops, dispatched by device to `sigma_fast._C` (C++ on the CPU, CUDA on the
GPU) when the extension is built, else to the PyTorch references in `sigma_fast.ops.reference`.

The compiled ops and the references take the same arguments, give the same results (floats to
1e-5, uint8 exactly) and raise the same errors (ValueError / TypeError) on inputs outside the
contract: the compiled ops check their own inputs (csrc/ops.cpp), with messages built without
iostreams (csrc/check.h: formatting a number through a stream in the extension crashed the process
on the H200 image of 2026-11-27, torch 2.11 + g++ 13; see bench/RESULTS.md). Inputs that are not
tensors at all go to the references, which name the problem.
"""
import torch

from sigma_fast import _ext
from sigma_fast.ops import reference

__all__ = ["postprocess_masks", "preprocess_pairs", "reference", "vae_roundtrip_composite"]


def _compiled_ops(*tensors):
    """`sigma_fast._C` when it has an implementation for these tensors' device, else None.
    Anything that is not a tensor goes to the reference, which names the problem."""
    if not tensors or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        return None
    device = tensors[0].device.type
    if (device == "cpu" and _ext.has_cpu_ops()) or (device == "cuda" and _ext.has_cuda_ops()):
        return _ext._C
    return None


def preprocess_pairs(originals, editeds, size=518, dtype=torch.float32):
    """Lists of uint8 (H_i, W_i, 3) -> (x_orig, x_edit), each (B, 3, size, size) in `dtype`:
    antialiased bilinear resize, then ImageNet normalisation; all images in one launch."""
    ops = _compiled_ops(*originals, *editeds)
    if ops is None:
        return reference.preprocess_pairs(originals, editeds, size, dtype)
    return ops.preprocess_pairs(list(originals), list(editeds), size, dtype)


def postprocess_masks(logits, sizes, threshold=0.5, return_probs=False):
    """(B, 1, h, w) logits -> per-image uint8 {0, 255} masks at (H_i, W_i) and scores (B,); with
    `return_probs`, the float32 probability maps as a third list."""
    ops = _compiled_ops(logits)
    if ops is None:
        return reference.postprocess_masks(logits, sizes, threshold, return_probs)
    masks, scores, probs = ops.postprocess_masks(
        logits, [(int(height), int(width)) for height, width in sizes], float(threshold), bool(return_probs))
    return (masks, scores, probs) if return_probs else (masks, scores)


def vae_roundtrip_composite(x_vae, x_edit=None, edit_mask=None):
    """VAE decoder output (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) as an editor saves it,
    with `x_edit` (uint8 (B, H, W, 3)) pasted where `edit_mask` (B, H, W) > 0.5."""
    ops = _compiled_ops(x_vae, *(tensor for tensor in (x_edit, edit_mask) if tensor is not None))
    if ops is None:
        return reference.vae_roundtrip_composite(x_vae, x_edit, edit_mask)
    return ops.vae_roundtrip_composite(x_vae, x_edit, edit_mask)
