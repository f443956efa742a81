"""The shapes and dtypes at which production calls the fused kernels: one list, imported by the
compile gate (`bench/compile_check.py`) and the benchmarks (issue 12).

Numbers come from the configs, not constants: the head is `SigmaConfig()`'s defaults (taps 2, 5,
11; D = 256; 8 refinement heads; 3 text segments of 32 tokens), the backbone is DINOv2-B
(`Dinov2Config()`'s defaults are ViT-B/14) at the head's 518x518, read through our own
`ViTConfig`. Annotation runs 32 and 64 pairs per call in bf16 (FP8 GEMMs optionally, with the
row ops writing e4m3); training runs `OptimConfig().batch_size` pairs with a bf16 backbone and fp32
head parameters under bf16 autocast.

`VARIANTS` lists every (op, variant) production runs; the `*_inputs` builders make its arguments
as production lays them out (taps are slices of the backbone's (2B, 1 + N, C) output, the
attention's heads are views of one paired projection). `generator=None` gives `torch.empty`
tensors (the compile gate only needs shapes); a generator gives random values (benchmarks).
"""
from typing import NamedTuple

import torch
from transformers import Dinov2Config

from sigma_fast.config import SigmaConfig
from sigma_fast.model.refinement import PRIOR_EPS
from sigma_fast.model.text import SEGMENTS
from sigma_fast.model.vit import ViTConfig
from sigma_fast.train.config import OptimConfig

HEAD = SigmaConfig()
BACKBONE = ViTConfig.from_hf(Dinov2Config(image_size=HEAD.image_size), num_layers=max(HEAD.taps))
GRID = HEAD.image_size // BACKBONE.patch_size  # 37
TOKENS = GRID * GRID  # N = 1369 patch tokens per image
SEQUENCE = 1 + BACKBONE.num_register_tokens + TOKENS  # 1370 backbone tokens (CLS first)
CHANNELS = BACKBONE.hidden_size  # C = 768
MLP_HIDDEN = BACKBONE.mlp_hidden  # 3072
BACKBONE_HEADS = BACKBONE.num_heads  # 12
BACKBONE_HEAD_DIM = CHANNELS // BACKBONE_HEADS  # 64
LN_EPS = BACKBONE.layer_norm_eps
NUM_TAPS = len(HEAD.taps)  # L = 3
FEATURES = 2 * CHANNELS + 1  # channels of d per tap
DIM = HEAD.dim  # D = 256
HEADS = HEAD.refine_heads  # 8
HEAD_DIM = DIM // HEADS  # 32
TEXT_TOKENS = len(SEGMENTS) * HEAD.max_text_tokens  # T = 96

ANNOTATION_PAIRS = (32, 64)
TRAINING_PAIRS = OptimConfig().batch_size  # 32
ANNOTATION_DTYPE = torch.bfloat16
TRAINING_DTYPE = torch.bfloat16  # backbone and autocast; head parameters stay fp32


def backbone_rows(pairs):
    """Rows of the backbone's row ops and GEMMs: both images of every pair, every token."""
    return 2 * pairs * SEQUENCE


class Variant(NamedTuple):
    op: str  # the fused op (a function of sigma_fast.kernels)
    mode: str  # what production runs it for; the builders below take it
    pairs: int
    backward: bool  # training differentiates through it


def _variants():
    rows = []
    for pairs in ANNOTATION_PAIRS:
        rows += [Variant("feature_diff", "annotate", pairs, False), Variant("bi_attention", "annotate", pairs, False)]
        rows += [Variant(op, mode, pairs, False) for op, mode in (
            ("residual_layer_norm", "boundary"), ("residual_layer_norm", "first"),
            ("residual_layer_norm_fp8", "boundary"), ("residual_layer_norm_fp8", "first"),
            ("quantize_fp8_rows", "attention_out"), ("quantize_fp8_rows", "fc1_gelu"),
            ("linear_gelu", "fc1"), ("linear_residual", "fc2"), ("linear_residual", "proj"))]
    pairs = TRAINING_PAIRS
    rows += [Variant("feature_diff", "train_stage1", pairs, True),
             Variant("feature_diff", "train_stage2", pairs, True),
             Variant("feature_diff", "ema_teacher", pairs, False),
             Variant("feature_diff_stats", "calibration", pairs, False),
             Variant("bi_attention", "train", pairs, True)]
    return tuple(rows)


VARIANTS = _variants()


def make(shape, dtype, device, generator=None, scale=1.0):
    """An empty tensor (generator None) or a random normal one times `scale`."""
    if generator is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return (torch.randn(shape, generator=generator, device=device) * scale).to(dtype)


def feature_diff_inputs(mode, pairs, device, generator=None):
    """(f_orig, f_edit, params) as `DifferenceBranch.forward` passes them in `mode`:
    - annotate: bf16 model, whitening folded into a bf16 (W', b'), no statistics;
    - train_stage1: fp32 weight and bias (requires grad), uncalibrated (no statistics);
    - train_stage2: fp32 weight and bias (requires grad), fp32 noise statistics;
    - ema_teacher: the teacher's fp32 folded (W', b') under no grad;
    - calibration: taps only (`feature_diff_stats`).
    Taps: L slices (B, N, C) of (2B, 1 + N, C) bf16 backbone outputs, originals first."""
    taps = [make((2 * pairs, SEQUENCE, CHANNELS), ANNOTATION_DTYPE, device, generator)[:, SEQUENCE - TOKENS:]
            for _ in range(NUM_TAPS)]
    f_orig, f_edit = [t[:pairs] for t in taps], [t[pairs:] for t in taps]
    if mode == "calibration":
        return f_orig, f_edit, {}
    dtype = ANNOTATION_DTYPE if mode == "annotate" else torch.float32
    params = {"weight": make((NUM_TAPS, FEATURES, DIM), dtype, device, generator, (NUM_TAPS * FEATURES) ** -0.5),
              "bias": make((DIM,), dtype, device, generator, 0.1)}
    if mode == "train_stage2":
        params["noise_mean"] = make((NUM_TAPS, FEATURES), torch.float32, device, generator, 0.1)
        params["noise_std"] = make((NUM_TAPS, FEATURES), torch.float32, device, generator, 0.1) + 1.0
    if mode in ("train_stage1", "train_stage2"):
        for name in ("weight", "bias"):
            params[name].requires_grad_()
    elif mode not in ("annotate", "ema_teacher"):
        raise ValueError(f"feature_diff_inputs: unknown mode {mode!r}")
    return f_orig, f_edit, params


def bi_attention_inputs(mode, pairs, device, generator=None):
    """Keyword arguments of `kernels.bi_attention` as `BiAttentionBlock.forward` makes them:
    q_v, v_v (B, H, N, d) and k_t, v_t (B, H, T, d) are views of one (B, rows, 2 * D) projection
    each; the prior's log is in the visual stream's dtype (bf16 in annotation, fp32 under
    autocast in training, where LayerNorm outputs fp32); `train` makes q, k, v require grad."""
    def paired(rows):
        pair = make((pairs, rows, 2 * DIM), ANNOTATION_DTYPE, device, generator).unflatten(-1, (2, HEADS, HEAD_DIM))
        return pair[:, :, 0].transpose(1, 2), pair[:, :, 1].transpose(1, 2)

    q_v, v_v = paired(TOKENS)
    k_t, v_t = paired(TEXT_TOKENS)
    if mode == "train":
        q_v, v_v, k_t, v_t = (t.detach().requires_grad_() for t in (q_v, v_v, k_t, v_t))
    elif mode != "annotate":
        raise ValueError(f"bi_attention_inputs: unknown mode {mode!r}")
    prior_dtype = ANNOTATION_DTYPE if mode == "annotate" else torch.float32
    if generator is None:
        prior_bias = torch.empty(pairs, TOKENS, dtype=prior_dtype, device=device)
        text_mask = torch.ones(pairs, TEXT_TOKENS, dtype=torch.bool, device=device)
    else:
        prior = torch.rand(pairs, TOKENS, generator=generator, device=device)
        prior_bias = torch.log(prior.clamp_min(PRIOR_EPS)).to(prior_dtype)
        # Instruction segment partly filled, concept segments partly or wholly masked.
        text_mask = torch.rand(pairs, TEXT_TOKENS, generator=generator, device=device) > 0.4
        text_mask[:, 0] = True
    return {"q_v": q_v, "k_t": k_t, "v_v": v_v, "v_t": v_t, "prior_bias": prior_bias, "text_mask": text_mask}


def row_op_inputs(op, mode, pairs, device, generator=None):
    """Positional arguments of the backbone's row op `op` (a function of sigma_fast.kernels):
    `boundary` is a block boundary x + gamma * y then LayerNorm, `first` the first LayerNorm (no
    residual); quantize_fp8_rows takes the attention output (C wide) or fc1's output (with GELU)."""
    rows = backbone_rows(pairs)
    if op == "quantize_fp8_rows":
        if mode == "attention_out":
            return make((rows, CHANNELS), ANNOTATION_DTYPE, device, generator), False
        return make((rows, MLP_HIDDEN), ANNOTATION_DTYPE, device, generator), True

    def vector(scale, shift=0.0):
        return make((CHANNELS,), ANNOTATION_DTYPE, device, generator, scale) + shift

    x = make((2 * pairs, SEQUENCE, CHANNELS), ANNOTATION_DTYPE, device, generator, 3.0)
    if mode == "first":
        return x, None, None, vector(0.1, 1.0), vector(0.1), LN_EPS
    y = make((2 * pairs, SEQUENCE, CHANNELS), ANNOTATION_DTYPE, device, generator)
    return x, y, vector(0.1), vector(0.1, 1.0), vector(0.1), LN_EPS


LINEAR_SHAPES = {"fc1": (CHANNELS, MLP_HIDDEN), "fc2": (MLP_HIDDEN, CHANNELS), "proj": (CHANNELS, CHANNELS)}


def linear_inputs(op, mode, pairs, device, generator=None):
    """Positional arguments of `kernels.linear_gelu` (fc1) or `kernels.linear_residual` (fc2,
    proj: bias, LayerScale and the residual stream), weights in nn.Linear's (N, K) layout."""
    in_features, out_features = LINEAR_SHAPES[mode]
    rows = backbone_rows(pairs)
    a = make((rows, in_features), ANNOTATION_DTYPE, device, generator)
    weight = make((out_features, in_features), ANNOTATION_DTYPE, device, generator, in_features ** -0.5)
    bias = make((out_features,), ANNOTATION_DTYPE, device, generator, 0.1)
    if op == "linear_gelu":
        return a, weight, bias
    gamma = make((out_features,), ANNOTATION_DTYPE, device, generator, 0.1)
    return a, weight, bias, gamma, make((rows, out_features), ANNOTATION_DTYPE, device, generator)


def inputs(variant, device, generator=None):
    """-> (args, kwargs) of `getattr(sigma_fast.kernels, variant.op)` for this variant."""
    if variant.op in ("feature_diff", "feature_diff_stats"):
        f_orig, f_edit, params = feature_diff_inputs(variant.mode, variant.pairs, device, generator)
        return (f_orig, f_edit), params
    if variant.op == "bi_attention":
        return (), bi_attention_inputs(variant.mode, variant.pairs, device, generator)
    if variant.op in ("linear_gelu", "linear_residual"):
        return linear_inputs(variant.op, variant.mode, variant.pairs, device, generator), {}
    return row_op_inputs(variant.op, variant.mode, variant.pairs, device, generator), {}
