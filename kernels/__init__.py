"""Fused ops of SIGMA's head, dispatched by device.

Each op is a PyTorch custom op (`sigma_fast::...`, traceable by `torch.compile`): CUDA tensors run
its Triton kernel; CPU tensors run the PyTorch reference in `sigma_fast.kernels.reference`, unless
`TRITON_INTERPRET=1` is set (then Triton runs in its interpreter, which is how CI tests the
kernels). Without Triton installed the public functions call the references directly.
"""
from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import HAS_TRITON, common_device, use_triton

if HAS_TRITON:
    # Imported under other names: the submodules share their names with the ops below.
    from sigma_fast.kernels.bi_attention import MAX_TEXT_TOKENS, fused_bi_attention
    from sigma_fast.kernels.feature_diff import fused_feature_diff, fused_feature_diff_stats
    # The custom ops sigma_fast::linear_gelu / linear_residual (they dispatch by device themselves).
    from sigma_fast.kernels.linear_epilogue import linear_gelu as linear_gelu_op
    from sigma_fast.kernels.linear_epilogue import linear_residual as linear_residual_op
    # The custom ops sigma_fast::residual_layer_norm(_fp8), layer_norm(_fp8), quantize_fp8_rows.
    from sigma_fast.kernels.quantize_fp8 import quantize_fp8_rows as quantize_fp8_rows_op
    from sigma_fast.kernels.residual_layer_norm import (
        layer_norm_fp8_op, layer_norm_op, residual_layer_norm_fp8_op, residual_layer_norm_op)


def feature_diff(f_orig, f_edit, weight, bias=None, noise_mean=None, noise_std=None):
    """sum_l whiten(d_l) @ weight[l] + bias; see `reference.feature_diff` for the contract.

    The fused kernel differentiates in weight, bias, noise_mean and noise_std; taps that require
    grad (a backbone being trained) take the reference path, which differentiates in everything.
    """
    common_device("feature_diff", *f_orig, *f_edit, weight, bias, noise_mean, noise_std)
    # The custom op sigma_fast::feature_diff: Triton on CUDA (or the interpreter), else the reference.
    if HAS_TRITON and not any(t.requires_grad for t in (*f_orig, *f_edit)):
        return fused_feature_diff(f_orig, f_edit, weight, bias, noise_mean, noise_std)
    return reference.feature_diff(f_orig, f_edit, weight, bias, noise_mean, noise_std)


def feature_diff_stats(f_orig, f_edit):
    """Per-tap channel mean and std of d over all tokens; see `reference.feature_diff_stats`."""
    common_device("feature_diff_stats", *f_orig, *f_edit)
    if HAS_TRITON and not any(t.requires_grad for t in (*f_orig, *f_edit)):
        return fused_feature_diff_stats(f_orig, f_edit)
    return reference.feature_diff_stats(f_orig, f_edit)


def bi_attention(q_v, k_t, v_v, v_t, prior_bias=None, text_mask=None, scale=None):
    """Both directions of text-visual attention from one logit matrix; see `reference.bi_attention`.

    More than 128 text tokens (the fused kernel keeps a head's text in registers) take the
    reference path.
    """
    common_device("bi_attention", q_v, k_t, v_v, v_t, prior_bias, text_mask)
    # The custom op sigma_fast::bi_attention: Triton on CUDA (or the interpreter), else the
    # reference. Inputs of the wrong rank go to it too, for its clear error.
    if HAS_TRITON and (k_t.dim() != 4 or k_t.shape[2] <= MAX_TEXT_TOKENS):
        return fused_bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale)
    return reference.bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale)


def linear_gelu(a, weight, bias=None):
    """Exact GELU of a @ weight.T + bias, fused into the GEMM's epilogue; see `reference.linear_gelu`.

    a (..., K), weight (N, K), bias (N,) or None -> (..., N) in a's dtype. Inference only.
    """
    if HAS_TRITON:
        return linear_gelu_op(a, weight, bias)
    return reference.linear_gelu(a, weight, bias)


def linear_residual(a, weight, bias, gamma, residual):
    """residual + gamma * (a @ weight.T + bias), fused into the GEMM's epilogue; see
    `reference.linear_residual`.

    a (..., K), weight (N, K), bias and gamma (N,) or None, residual (..., N) -> (..., N) in
    residual's dtype. Inference only.
    """
    if HAS_TRITON:
        return linear_residual_op(a, weight, bias, gamma, residual)
    return reference.linear_residual(a, weight, bias, gamma, residual)


def residual_layer_norm(x, y, gamma, weight, bias, eps):
    """A block boundary in one pass: (x_out, h) with x_out = x + gamma * y in x's dtype (x itself
    when y is None) and h = LayerNorm(x_out) in x's dtype; see `reference.residual_layer_norm`.

    x, y (..., C); gamma (C,) or None; weight, bias (C,). Inference only.
    """
    if not HAS_TRITON:
        return reference.residual_layer_norm(x, y, gamma, weight, bias, eps)
    if y is None:
        return x, layer_norm_op(x, weight, bias, eps)
    return residual_layer_norm_op(x, y, gamma, weight, bias, eps)


def residual_layer_norm_fp8(x, y, gamma, weight, bias, eps):
    """`residual_layer_norm` with h as per-row e4m3: (x_out, h_fp8 (..., C), h_scale (M, 1) fp32);
    see `reference.residual_layer_norm_fp8`. Inference only."""
    if not HAS_TRITON:
        return reference.residual_layer_norm_fp8(x, y, gamma, weight, bias, eps)
    if y is None:
        return (x, *layer_norm_fp8_op(x, weight, bias, eps))
    return residual_layer_norm_fp8_op(x, y, gamma, weight, bias, eps)


def quantize_fp8_rows(x, apply_gelu=False):
    """Per-row e4m3 quantisation of x (..., K), GELU first if asked: (x_fp8 (..., K), scale (M, 1));
    see `reference.quantize_fp8_rows`. Inference only."""
    if not HAS_TRITON:
        return reference.quantize_fp8_rows(x, apply_gelu)
    return quantize_fp8_rows_op(x, apply_gelu)


__all__ = ["bi_attention", "feature_diff", "feature_diff_stats", "linear_gelu", "linear_residual",
           "quantize_fp8_rows", "reference", "residual_layer_norm", "residual_layer_norm_fp8"]
