"""sm90_report CASES for the row-wise kernels at DINOv2-B's production shapes (bf16).

    python ../shared/tools/sm90_report.py bench/sm90_cases_rowwise.py --fail-on-spill

M = 64 images x 1370 tokens. The block boundary with its residual and LayerScale (bf16 h and
per-row e4m3 h), the first LayerNorm of the backbone (no residual), and the per-row e4m3
quantisation of fc1's output (K = 3072, with GELU) and of a 768-wide activation. The launchers
are called directly: the ops send CPU tensors to the references.
"""
import torch

from sigma_fast.kernels.quantize_fp8 import launch_quantize_fp8_rows
from sigma_fast.kernels.residual_layer_norm import launch_residual_layer_norm

ROWS, WIDTH, HIDDEN = 64 * 1370, 768, 3072


def _empty(*shape):
    return torch.empty(*shape, dtype=torch.bfloat16)


def _boundary(with_y, fp8):
    def run():
        y = _empty(ROWS, WIDTH) if with_y else None
        gamma = _empty(WIDTH) if with_y else None
        launch_residual_layer_norm(_empty(ROWS, WIDTH), y, gamma, _empty(WIDTH), _empty(WIDTH), 1e-6, fp8)
    return run


def _quantize(width, apply_gelu):
    return lambda: launch_quantize_fp8_rows(_empty(ROWS, width), apply_gelu)


CASES = {
    "residual_layer_norm_768": _boundary(with_y=True, fp8=False),
    "residual_layer_norm_fp8_768": _boundary(with_y=True, fp8=True),
    "layer_norm_768": _boundary(with_y=False, fp8=False),
    "quantize_fp8_gelu_3072": _quantize(HIDDEN, apply_gelu=True),
    "quantize_fp8_768": _quantize(WIDTH, apply_gelu=False),
}
