"""Plain PyTorch twins of the fused Triton kernels: the oracle in tests and the CPU fallback.

Each function states the shapes and semantics its fused version must match.
"""
import torch
import torch.nn.functional as F

LN_EPS = 1e-6


def _difference_features(f_orig, f_edit):
    # (B, N, C), (B, N, C) -> (B, N, 2C+1), in fp32
    o = F.layer_norm(f_orig.float(), (f_orig.shape[-1],), eps=LN_EPS)
    e = F.layer_norm(f_edit.float(), (f_edit.shape[-1],), eps=LN_EPS)
    cos = F.cosine_similarity(o, e, dim=-1, eps=1e-8)
    return torch.cat([(o - e).abs(), o * e, (1.0 - cos)[..., None]], dim=-1)


def _check_taps(f_orig, f_edit):
    if len(f_orig) == 0 or len(f_orig) != len(f_edit):
        raise ValueError(f"feature_diff needs the same non-zero number of taps for both images, "
                         f"got {len(f_orig)} and {len(f_edit)}")
    for level, (o, e) in enumerate(zip(f_orig, f_edit)):
        if o.shape != e.shape or o.dim() != 3:
            raise ValueError(f"tap {level}: expected two (B, N, C) tensors of one shape, "
                             f"got {tuple(o.shape)} and {tuple(e.shape)}")


def feature_diff(f_orig, f_edit, weight, bias=None, noise_mean=None, noise_std=None):
    """sum_l whiten(d_l) @ weight[l] + bias, d_l = [|o-e|, o*e, 1-cos(o,e)] on LayerNormed taps.

    f_orig, f_edit: L tensors (B, N, C); weight (L, 2C+1, D); bias (D,);
    noise_mean, noise_std (L, 2C+1). Returns (B, N, D) in f_orig's dtype, accumulated in fp32.
    """
    _check_taps(f_orig, f_edit)
    out = None
    for level, (o, e) in enumerate(zip(f_orig, f_edit)):
        d = _difference_features(o, e)
        if noise_mean is not None:
            d = d - noise_mean[level].float()
        if noise_std is not None:
            d = d / noise_std[level].float()
        term = d @ weight[level].float()
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias.float()
    return out.to(f_orig[0].dtype)


def feature_diff_stats(f_orig, f_edit):
    """Per-tap channel mean and std (population) of d over all tokens: (L, 2C+1) each, fp32."""
    _check_taps(f_orig, f_edit)
    means, stds = [], []
    for o, e in zip(f_orig, f_edit):
        d = _difference_features(o, e).flatten(0, 1)
        means.append(d.mean(0))
        stds.append(d.std(0, unbiased=False))
    return torch.stack(means), torch.stack(stds)


def bi_attention(q_v, k_t, v_v, v_t, prior_bias=None, text_mask=None, scale=None):
    """Both directions of cross-attention from one logit matrix A = q_v k_t^T * scale.

    q_v, v_v: (B, H, N, d); k_t, v_t: (B, H, T, d); prior_bias (B, N); text_mask (B, T) bool.
    Returns o_v (B, H, N, d) = softmax_T(A) v_t and o_t (B, H, T, d) = softmax_N(A^T + prior) v_v,
    with zero rows of o_t for padded text tokens.
    """
    if scale is None:
        scale = q_v.shape[-1] ** -0.5
    logits = torch.einsum("bhnd,bhtd->bhnt", q_v.float(), k_t.float()) * scale  # (B, H, N, T)
    visual_logits = logits
    if text_mask is not None:
        visual_logits = logits.masked_fill(~text_mask[:, None, None, :], float("-inf"))
    o_v = torch.softmax(visual_logits, dim=-1) @ v_t.float()
    text_logits = logits.transpose(-1, -2)  # (B, H, T, N)
    if prior_bias is not None:
        text_logits = text_logits + prior_bias.float()[:, None, None, :]
    o_t = torch.softmax(text_logits, dim=-1) @ v_v.float()
    if text_mask is not None:
        o_t = o_t * text_mask[:, None, :, None].to(o_t.dtype)
    return o_v.to(q_v.dtype), o_t.to(q_v.dtype)


def linear_gelu(a, weight, bias=None):
    """Exact (erf) GELU of a @ weight.T + bias in fp32: a (..., K), weight (N, K), bias (N,)
    -> (..., N) in a's dtype."""
    out = F.linear(a.float(), weight.float(), bias.float() if bias is not None else None)
    return F.gelu(out).to(a.dtype)


def linear_residual(a, weight, bias, gamma, residual):
    """residual + gamma * (a @ weight.T + bias) in fp32: a (..., K), weight (N, K), bias and gamma
    (N,) or None, residual (..., N) -> (..., N) in residual's dtype."""
    out = F.linear(a.float(), weight.float(), bias.float() if bias is not None else None)
    if gamma is not None:
        out = out * gamma.float()
    return (residual.float() + out).to(residual.dtype)


E4M3_MAX = 448.0  # largest finite float8_e4m3fn value


def _quantize_e4m3_rows(values):
    """fp32 (..., K) -> (e4m3 (..., K), scale (M, 1) fp32): per-row absmax scaling, values ~= q * scale."""
    rows = values.reshape(-1, values.shape[-1])
    absmax = rows.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    # Multiplying by 448 / absmax (not dividing by the scale) is what the kernels do too.
    scaled = (rows * (E4M3_MAX / absmax)).clamp(-E4M3_MAX, E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).reshape(values.shape), absmax / E4M3_MAX


def _residual_layer_norm_fp32(x, y, gamma, weight, bias, eps):
    # x_out in x's dtype (x itself without y) and its LayerNorm in fp32
    if y is not None:
        update = y.float() if gamma is None else y.float() * gamma.float()
        x = (x.float() + update).to(x.dtype)
    return x, F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps)


def residual_layer_norm(x, y, gamma, weight, bias, eps):
    """A block boundary: x_out = x + gamma * y (fp32, stored in x's dtype; x itself if y is None,
    gamma None means 1), h = LayerNorm(x_out) over C in fp32 from the rounded x_out, in x's dtype.

    x, y (..., C); gamma, weight, bias (C,). Returns (x_out, h)."""
    x_out, h = _residual_layer_norm_fp32(x, y, gamma, weight, bias, eps)
    return x_out, h.to(x.dtype)


def residual_layer_norm_fp8(x, y, gamma, weight, bias, eps):
    """`residual_layer_norm` with h quantised per row from fp32 to float8_e4m3fn.

    Returns (x_out, h_fp8 (..., C), h_scale (M, 1) fp32) over the M flattened rows:
    h_scale = max(absmax(h_row), 1e-12) / 448, h_fp8 = h * (448 / that absmax) rounded to nearest
    even and saturated to +-448, so h ~= h_fp8 * h_scale."""
    x_out, h = _residual_layer_norm_fp32(x, y, gamma, weight, bias, eps)
    return (x_out, *_quantize_e4m3_rows(h))


def quantize_fp8_rows(x, apply_gelu=False):
    """Per-row e4m3 quantisation of x (..., K), after an exact (erf) GELU in fp32 if asked; the
    scale rule of `residual_layer_norm_fp8`. Returns (x_fp8 (..., K), scale (M, 1) fp32)."""
    values = x.float()
    if apply_gelu:
        values = F.gelu(values)
    return _quantize_e4m3_rows(values)
