"""Plain PyTorch twins of the fused Triton kernels: the oracle in tests and the CPU fallback.

Shapes and semantics are the contracts of DESIGN.md; the fused versions must match these.
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
