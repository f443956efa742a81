"""Fused ops of SIGMA's head, dispatched by device.

CUDA tensors go to the Triton kernels; CPU tensors go to the PyTorch references in
`sigma_fast.kernels.reference`, unless `TRITON_INTERPRET=1` is set (then Triton runs in its
interpreter, which is how CI tests the kernels). Without Triton installed everything uses the
references.
"""
from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import HAS_TRITON, common_device, use_triton

if HAS_TRITON:
    # Imported under other names: the submodules share their names with the ops below.
    from sigma_fast.kernels.bi_attention import MAX_TEXT_TOKENS, fused_bi_attention
    from sigma_fast.kernels.feature_diff import fused_feature_diff, fused_feature_diff_stats


def feature_diff(f_orig, f_edit, weight, bias=None, noise_mean=None, noise_std=None):
    """sum_l whiten(d_l) @ weight[l] + bias; see `reference.feature_diff` for the contract.

    The fused kernel differentiates in weight, bias, noise_mean and noise_std; taps that require
    grad (a backbone being trained) take the reference path, which differentiates in everything.
    """
    device = common_device("feature_diff", *f_orig, *f_edit, weight, bias, noise_mean, noise_std)
    if use_triton(device) and not any(t.requires_grad for t in (*f_orig, *f_edit)):
        return fused_feature_diff(f_orig, f_edit, weight, bias, noise_mean, noise_std)
    return reference.feature_diff(f_orig, f_edit, weight, bias, noise_mean, noise_std)


def feature_diff_stats(f_orig, f_edit):
    """Per-tap channel mean and std of d over all tokens; see `reference.feature_diff_stats`."""
    device = common_device("feature_diff_stats", *f_orig, *f_edit)
    if use_triton(device) and not any(t.requires_grad for t in (*f_orig, *f_edit)):
        return fused_feature_diff_stats(f_orig, f_edit)
    return reference.feature_diff_stats(f_orig, f_edit)


def bi_attention(q_v, k_t, v_v, v_t, prior_bias=None, text_mask=None, scale=None):
    """Both directions of text-visual attention from one logit matrix; see `reference.bi_attention`.

    More than 128 text tokens (the fused kernel keeps a head's text in registers) take the
    reference path.
    """
    device = common_device("bi_attention", q_v, k_t, v_v, v_t, prior_bias, text_mask)
    # Inputs of the wrong rank go to the fused path too, for its clear error.
    if use_triton(device) and (k_t.dim() != 4 or k_t.shape[2] <= MAX_TEXT_TOKENS):
        return fused_bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale)
    return reference.bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale)


__all__ = ["bi_attention", "feature_diff", "feature_diff_stats", "reference"]
