"""Fused multi-tap feature differencing and projection (SIGMA's difference branch).

Forward, one persistent launch: as many programs as SMs, each looping over output tiles of
BLOCK_M = 128 tokens x BLOCK_D = 128 outputs, a token tile's D tiles next to each other (so the
D tiles of one token tile run on neighbouring SMs at about the same time, and with an even grid a
program keeps to one D tile of the projection). Per tile and tap, a pre-loop over C computes the
tokens' LayerNorm moments and 1 - cos (chunks merged with Chan's formula); then the K loop, its
loads software-pipelined (`tl.range(num_stages=...)`, cp.async on Ampere and Hopper), rebuilds
|o-e| and o*e chunk by chunk in registers (whitened when noise statistics are given) as the A
operands of two `tl.dot`s (wgmma on Hopper) against their own contiguous row blocks of the
projection; the 1-cos column is a rank-1 update. All taps accumulate into one fp32 accumulator, so
the (B, N, 2C+1) difference tensor never reaches memory and DRAM sees each tap about once (the
K loop's second read of a tile hits L2). A half-precision forward takes the projection in the
taps' dtype (annotation's folded bf16 W' as is; training's fp32 master copy cast once per call).

Backward (training): the per-token moments and 1-cos saved by the forward (5 floats per token and
tap) let a second kernel rebuild d tile by tile and compute grad_weight = d^T grad_out, split over
tokens for parallelism. Grads of bias, noise_mean and noise_std follow from grad_out's column sums
and grad_weight without touching d again (see `_feature_diff_backward`).

`feature_diff_stats` is one fused reduction: per block of tokens, the channel means and centred
sums of squares of d, combined across blocks with Chan's formula on the host.

All three are PyTorch custom ops (sigma_fast::feature_diff, ::feature_diff_weight_grad,
::feature_diff_stats) with fake implementations, so `torch.compile(fullgraph=True)` traces them and
CUDA graphs capture them; each runs its kernel where `use_triton` says so and its plain PyTorch
reference elsewhere.
"""
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import dot_config, interpreting, use_triton
from sigma_fast.kernels.reference import LN_EPS

COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default, as the reference uses
# Token stats saved for the backward, rows of an (L, 5, B*N) fp32 tensor: mean and 1/std of the
# original's and the edited taps over C, then 1 - cos.
NUM_STATS = 5
STAT_ONE_MINUS_COS = 4


@triton.jit
def _token_rows(row_start, M, N, stride_b, stride_n, BLOCK_M: tl.constexpr):
    """Offsets of BLOCK_M flattened (b, n) tokens in a (B, N, C) tensor, and which exist."""
    rows = row_start + tl.arange(0, BLOCK_M)
    rows64 = rows.to(tl.int64)
    return (rows64 // N) * stride_b + (rows64 % N) * stride_n, rows < M


@triton.jit
def _token_moments(x_ptr, y_ptr, x_rows, y_rows, token_mask, C,
                   LN_EPS: tl.constexpr, COS_EPS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Per token: mean and 1/std of x and y over C, and 1 - cos of their LayerNormed versions.

    One pass over C, loads STAGES deep; each chunk's centred sums are exact in registers and merged
    with Chan's parallel formula, so large channel means do not cancel the variance.
    """
    count = 0.0
    mean_x = tl.zeros((BLOCK_M,), tl.float32)
    mean_y = tl.zeros((BLOCK_M,), tl.float32)
    m2_x = tl.zeros((BLOCK_M,), tl.float32)
    m2_y = tl.zeros((BLOCK_M,), tl.float32)
    co_xy = tl.zeros((BLOCK_M,), tl.float32)
    for c_start in tl.range(0, C, BLOCK_C, num_stages=STAGES):
        cols = c_start + tl.arange(0, BLOCK_C)
        mask = token_mask[:, None] & (cols < C)[None, :]
        x = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + y_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        chunk_count = tl.minimum(C - c_start, BLOCK_C).to(tl.float32)
        chunk_mean_x = tl.sum(x, 1) / chunk_count
        chunk_mean_y = tl.sum(y, 1) / chunk_count
        xc = tl.where(mask, x - chunk_mean_x[:, None], 0.0)
        yc = tl.where(mask, y - chunk_mean_y[:, None], 0.0)
        total = count + chunk_count
        delta_x = chunk_mean_x - mean_x
        delta_y = chunk_mean_y - mean_y
        cross = count * chunk_count / total
        mean_x += delta_x * (chunk_count / total)
        mean_y += delta_y * (chunk_count / total)
        m2_x += tl.sum(xc * xc, 1) + delta_x * delta_x * cross
        m2_y += tl.sum(yc * yc, 1) + delta_y * delta_y * cross
        co_xy += tl.sum(xc * yc, 1) + delta_x * delta_y * cross
        count = total
    rstd_x = 1.0 / tl.sqrt(m2_x / C + LN_EPS)
    rstd_y = 1.0 / tl.sqrt(m2_y / C + LN_EPS)
    norm_o = tl.maximum(tl.sqrt(m2_x) * rstd_x, COS_EPS)
    norm_e = tl.maximum(tl.sqrt(m2_y) * rstd_y, COS_EPS)
    one_minus_cos = 1.0 - (co_xy * rstd_x * rstd_y) / (norm_o * norm_e)
    return mean_x, rstd_x, mean_y, rstd_y, one_minus_cos


@triton.jit
def _difference_channels(c_start, C, BLOCK_C: tl.constexpr):
    """Tap channels c_start.. of a chunk, and the 2*BLOCK_C channels of d they give, interleaved.

    Column 2j of a difference tile is |o-e| of channel c_start+j and column 2j+1 its o*e, so one
    `tl.dot` with K = 2*BLOCK_C covers both halves of d. Returns the tap channels, whether they
    exist, the d channel of each tile column and whether it exists.
    """
    cols = c_start + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    channels = tl.reshape(tl.join(cols, C + cols), (2 * BLOCK_C,))
    channel_mask = tl.reshape(tl.join(col_mask, col_mask), (2 * BLOCK_C,))
    return cols, col_mask, channels, channel_mask


@triton.jit
def _difference_tile(x_ptr, y_ptr, x_rows, y_rows, cols, mask, mean_x, rstd_x, mean_y, rstd_y,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """d for BLOCK_M tokens and BLOCK_C tap channels, |o-e| and o*e interleaved: (BLOCK_M, 2*BLOCK_C)."""
    x = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + y_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    o = (x - mean_x[:, None]) * rstd_x[:, None]
    e = (y - mean_y[:, None]) * rstd_y[:, None]
    return tl.reshape(tl.join(tl.abs(o - e), o * e), (BLOCK_M, 2 * BLOCK_C))


@triton.jit
def _whiten(values, noise_mean_ptr, noise_std_ptr, channels, channel_mask,
            HAS_MEAN: tl.constexpr, HAS_STD: tl.constexpr):
    """(values - noise_mean[channels]) / noise_std[channels], broadcast over the leading axis."""
    if HAS_MEAN:
        values -= tl.load(noise_mean_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_STD:
        # One division per channel, not per tile element.
        inv_std = 1.0 / tl.load(noise_std_ptr + channels, mask=channel_mask, other=1.0).to(tl.float32)
        values *= inv_std[None, :]
    return values


@triton.jit
def _feature_diff_forward_kernel(
    x_ptrs, y_ptrs, weight_ptr, bias_ptr, noise_mean_ptr, noise_std_ptr, out_ptr, stats_ptr,
    M, N, C, D,
    stride_xb, stride_xn, stride_yb, stride_yn, stride_stats_tap,
    NUM_TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MEAN: tl.constexpr,
    HAS_STD: tl.constexpr, SAVE_STATS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, LN_EPS: tl.constexpr, COS_EPS: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
):
    """Persistent: program p computes output tiles p, p + NUM_PROGRAMS, ... of (BLOCK_M tokens,
    BLOCK_D outputs), token tile major: the D tiles of one token tile run at about the same time
    on neighbouring programs, so the taps come from DRAM once and the projection stays in L2."""
    pid = tl.program_id(0)
    num_d_tiles = tl.cdiv(D, BLOCK_D)
    num_tiles = tl.cdiv(M, BLOCK_M) * num_d_tiles
    K = 2 * C + 1
    for tile in range(pid, num_tiles, NUM_PROGRAMS):
        d_tile = tile % num_d_tiles
        row_start = (tile // num_d_tiles) * BLOCK_M
        x_rows, token_mask = _token_rows(row_start, M, N, stride_xb, stride_xn, BLOCK_M)
        y_rows, _ = _token_rows(row_start, M, N, stride_yb, stride_yn, BLOCK_M)
        outs = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
        out_mask = outs < D
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for tap in tl.static_range(NUM_TAPS):
            x_ptr = x_ptrs[tap]
            y_ptr = y_ptrs[tap]
            tap_mean_ptr = noise_mean_ptr + tap * K
            tap_std_ptr = noise_std_ptr + tap * K
            tap_weight_ptr = weight_ptr + tap * K * D
            # The cheap pre-loop: LayerNorm moments and 1 - cos once per tile and tap, so the
            # K loop below does elementwise work and MMAs only.
            mean_x, rstd_x, mean_y, rstd_y, one_minus_cos = _token_moments(
                x_ptr, y_ptr, x_rows, y_rows, token_mask, C, LN_EPS, COS_EPS, BLOCK_M, BLOCK_C, STAGES)
            # The 1-cos column and the saved stats first: they are dead before the K loop starts.
            cos_term = one_minus_cos
            if HAS_MEAN:
                cos_term -= tl.load(tap_mean_ptr + 2 * C).to(tl.float32)
            if HAS_STD:
                cos_term /= tl.load(tap_std_ptr + 2 * C).to(tl.float32)
            w_cos = tl.load(tap_weight_ptr + 2 * C * D + outs, mask=out_mask, other=0.0).to(tl.float32)
            acc += cos_term[:, None] * w_cos[None, :]
            if SAVE_STATS:
                if d_tile == 0:
                    tap_stats_ptr = stats_ptr + tap * stride_stats_tap + row_start + tl.arange(0, BLOCK_M)
                    tl.store(tap_stats_ptr + 0 * M, mean_x, mask=token_mask)
                    tl.store(tap_stats_ptr + 1 * M, rstd_x, mask=token_mask)
                    tl.store(tap_stats_ptr + 2 * M, mean_y, mask=token_mask)
                    tl.store(tap_stats_ptr + 3 * M, rstd_y, mask=token_mask)
                    tl.store(tap_stats_ptr + 4 * M, one_minus_cos, mask=token_mask)
            # |o-e| and o*e as two dots against their own contiguous row blocks of the projection,
            # loads STAGES deep; the second read of the tile mostly hits L2.
            for c_start in tl.range(0, C, BLOCK_C, num_stages=STAGES):
                cols = c_start + tl.arange(0, BLOCK_C)
                col_mask = cols < C
                mask = token_mask[:, None] & col_mask[None, :]
                x = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                y = tl.load(y_ptr + y_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                o = (x - mean_x[:, None]) * rstd_x[:, None]
                e = (y - mean_y[:, None]) * rstd_y[:, None]
                dist = tl.abs(o - e)
                prod = o * e
                if HAS_MEAN:
                    dist -= tl.load(tap_mean_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                    prod -= tl.load(tap_mean_ptr + C + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                if HAS_STD:
                    # One division per channel, not per tile element.
                    dist *= (1.0 / tl.load(tap_std_ptr + cols, mask=col_mask, other=1.0).to(tl.float32))[None, :]
                    prod *= (1.0 / tl.load(tap_std_ptr + C + cols, mask=col_mask, other=1.0).to(tl.float32))[None, :]
                # Rows past C load as zero, so the tiles' padding columns add nothing.
                w_mask = col_mask[:, None] & out_mask[None, :]
                w_dist = tl.load(tap_weight_ptr + cols[:, None] * D + outs[None, :], mask=w_mask, other=0.0)
                w_prod = tl.load(tap_weight_ptr + (C + cols)[:, None] * D + outs[None, :], mask=w_mask, other=0.0)
                acc = tl.dot(dist.to(DOT_DTYPE), w_dist.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
                acc = tl.dot(prod.to(DOT_DTYPE), w_prod.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + outs, mask=out_mask, other=0.0).to(tl.float32)[None, :]
        rows = row_start + tl.arange(0, BLOCK_M)
        out_offsets = rows.to(tl.int64)[:, None] * D + outs[None, :]
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty),
                 mask=token_mask[:, None] & out_mask[None, :])


# The tap's offset into the (L, 2C+1) statistics is not specialised: one compiled kernel for all taps.
@triton.jit(do_not_specialize=["tap_offset"])
def _feature_diff_weight_grad_kernel(
    x_ptr, y_ptr, stats_ptr, noise_mean_ptr, noise_std_ptr, grad_out_ptr, partial_ptr,
    M, N, C, D, tokens_per_split, tap_offset,
    stride_xb, stride_xn, stride_yb, stride_yn, stride_gm, stride_gd,
    HAS_MEAN: tl.constexpr, HAS_STD: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One tap: partial[split, k, :] = sum over the split's tokens of d_w[token, k] * grad_out[token, :]
    for the 2C channels |o-e| and o*e (the 1-cos row is a matrix-vector product on the host)."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_split = tl.program_id(2)
    cols, col_mask, channels, channel_mask = _difference_channels(pid_c * BLOCK_C, C, BLOCK_C)
    outs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    out_mask = outs < D
    split_start = pid_split * tokens_per_split
    split_end = tl.minimum(split_start + tokens_per_split, M)
    acc = tl.zeros((2 * BLOCK_C, BLOCK_D), tl.float32)
    for row_start in range(split_start, split_end, BLOCK_M):
        x_rows, token_mask = _token_rows(row_start, split_end, N, stride_xb, stride_xn, BLOCK_M)
        y_rows, _ = _token_rows(row_start, split_end, N, stride_yb, stride_yn, BLOCK_M)
        rows = row_start + tl.arange(0, BLOCK_M)
        mean_x = tl.load(stats_ptr + 0 * M + rows, mask=token_mask, other=0.0)
        rstd_x = tl.load(stats_ptr + 1 * M + rows, mask=token_mask, other=0.0)
        mean_y = tl.load(stats_ptr + 2 * M + rows, mask=token_mask, other=0.0)
        rstd_y = tl.load(stats_ptr + 3 * M + rows, mask=token_mask, other=0.0)
        diff = _difference_tile(x_ptr, y_ptr, x_rows, y_rows, cols, token_mask[:, None] & col_mask[None, :],
                                mean_x, rstd_x, mean_y, rstd_y, BLOCK_M, BLOCK_C)
        diff = _whiten(diff, noise_mean_ptr + tap_offset, noise_std_ptr + tap_offset, channels, channel_mask,
                       HAS_MEAN, HAS_STD)
        grad_offsets = rows.to(tl.int64)[:, None] * stride_gm + outs[None, :] * stride_gd
        # Tokens past the split load a zero gradient, so whatever the tile holds there drops out.
        grad = tl.load(grad_out_ptr + grad_offsets, mask=token_mask[:, None] & out_mask[None, :],
                       other=0.0)
        acc = tl.dot(tl.trans(diff.to(DOT_DTYPE)), grad.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    partial_offsets = (pid_split * 2 * C + channels)[:, None] * D + outs[None, :]
    tl.store(partial_ptr + partial_offsets, acc, mask=channel_mask[:, None] & out_mask[None, :])


@triton.jit
def _feature_diff_stats_kernel(
    x_ptrs, y_ptrs, block_mean_ptr, block_m2_ptr,
    M, N, C, stride_xb, stride_xn, stride_yb, stride_yn,
    NUM_TAPS: tl.constexpr, LN_EPS: tl.constexpr, COS_EPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr,
):
    """Per tap and channel of d: mean and centred sum of squares over this program's tokens."""
    pid = tl.program_id(0)
    num_blocks = tl.num_programs(0)
    row_start = pid * BLOCK_M
    x_rows, token_mask = _token_rows(row_start, M, N, stride_xb, stride_xn, BLOCK_M)
    y_rows, _ = _token_rows(row_start, M, N, stride_yb, stride_yn, BLOCK_M)
    count = tl.minimum(M - row_start, BLOCK_M).to(tl.float32)
    K = 2 * C + 1
    for tap in tl.static_range(NUM_TAPS):
        x_ptr = x_ptrs[tap]
        y_ptr = y_ptrs[tap]
        mean_x, rstd_x, mean_y, rstd_y, one_minus_cos = _token_moments(
            x_ptr, y_ptr, x_rows, y_rows, token_mask, C, LN_EPS, COS_EPS, BLOCK_M, BLOCK_C, STAGES)
        out_ptr_offset = (tap * num_blocks + pid).to(tl.int64) * K
        for c_start in range(0, C, BLOCK_C):
            cols, col_mask, channels, channel_mask = _difference_channels(c_start, C, BLOCK_C)
            diff = _difference_tile(x_ptr, y_ptr, x_rows, y_rows, cols, token_mask[:, None] & col_mask[None, :],
                                    mean_x, rstd_x, mean_y, rstd_y, BLOCK_M, BLOCK_C)
            mask = token_mask[:, None] & channel_mask[None, :]
            block_mean = tl.sum(tl.where(mask, diff, 0.0), 0) / count
            centred = tl.where(mask, diff - block_mean[None, :], 0.0)
            tl.store(block_mean_ptr + out_ptr_offset + channels, block_mean, mask=channel_mask)
            tl.store(block_m2_ptr + out_ptr_offset + channels, tl.sum(centred * centred, 0), mask=channel_mask)
        cos_mean = tl.sum(tl.where(token_mask, one_minus_cos, 0.0), 0) / count
        cos_centred = tl.where(token_mask, one_minus_cos - cos_mean, 0.0)
        tl.store(block_mean_ptr + out_ptr_offset + 2 * C, cos_mean)
        tl.store(block_m2_ptr + out_ptr_offset + 2 * C, tl.sum(cos_centred * cos_centred, 0))


BLOCK_M = 64  # tokens per program of the weight-grad kernel; the smallest M of a Hopper warpgroup MMA
NUM_WARPS = 8
NUM_STAGES = 2
# The forward: 128 tokens x 128 outputs per tile (one 64-row wgmma per warpgroup of its 8 warps).
# All of D = 256 per tile (a 128-register accumulator per thread) spills at sm_90 whatever the
# depth; two D tiles of one token tile run side by side instead (the second read of the taps hits
# L2). 32 tap channels (64 of d) per K step on Hopper, 16 before it (mma.sync's operands spill at
# 32), loads 3 deep; with whitening vectors loaded per K step too (training), 16 channels 2 deep
# (32 spills with Triton 3.6).
FORWARD_BLOCK_M = 128
FORWARD_BLOCK_C = {90: 32, 0: 16}  # by the least compute capability
WHITENED_BLOCK_C = 16
FORWARD_BLOCK_D = 128
FORWARD_STAGES = 3
FORWARD_WARPS = 8
HOPPER_SMS = 132  # H100 / H200 SXM: the persistent grid when compiling without a GPU


def _capability(device):
    """Compute capability as 90 for sm_90: the device's, or the active Triton target's when
    compiling for a GPU from CPU tensors."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return triton.runtime.driver.active.get_current_target().arch


def _forward_block_c(device, channels, whitened):
    """Tap channels per K step of the forward (see FORWARD_BLOCK_C)."""
    if interpreting():
        return _block_c(channels)
    if whitened:
        return WHITENED_BLOCK_C
    capability = _capability(device)
    return next(block for least, block in FORWARD_BLOCK_C.items() if capability >= least)


def _num_sms(device):
    """Programs of a persistent grid: the device's SMs (a few in the interpreter, where fewer
    programs with more tiles each also exercise the persistent loop)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 3 if interpreting() else HOPPER_SMS


def _block_c(C):
    """Tap channels per chunk of the loops over C (a chunk of d holds twice as many)."""
    if interpreting():
        # The interpreter's cost grows with programs x loop trips: take whole channels at once.
        return min(128, max(8, triton.next_power_of_2(C)))
    return 32


def _block_d(D, dot_dtype, max_block_d):
    """Output channels per program; exact-fp32 dots run on FMA units and need half the width."""
    if dot_dtype == tl.float32 and not interpreting():
        max_block_d //= 2
    return min(max_block_d, max(16, triton.next_power_of_2(D)))


def _token_strides(taps):
    """(stride_b, stride_n) shared by all taps with unit channel stride; contiguous copies if not."""
    strides = {(t.stride(0), t.stride(1), t.stride(2)) for t in taps}
    if len(strides) == 1 and next(iter(strides))[2] == 1:
        return tuple(taps), next(iter(strides))[:2]
    taps = tuple(t.contiguous() for t in taps)
    return taps, (taps[0].stride(0), taps[0].stride(1))


def _check_taps(op_name, f_orig, f_edit):
    if len(f_orig) == 0 or len(f_orig) != len(f_edit):
        raise ValueError(f"{op_name} needs the same non-zero number of taps for both images, "
                         f"got {len(f_orig)} and {len(f_edit)}")
    shape, dtype = f_orig[0].shape, f_orig[0].dtype
    if len(shape) != 3:
        raise ValueError(f"{op_name}: taps must be (B, N, C), got {tuple(shape)}")
    for tap in (*f_orig, *f_edit):
        if tap.shape != shape or tap.dtype != dtype:
            raise ValueError(f"{op_name}: all taps must share one shape and dtype, got "
                             f"{tuple(tap.shape)} {tap.dtype} and {tuple(shape)} {dtype}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op_name}: taps must be float32, float16 or bfloat16, got {dtype}")


def _check_params(num_taps, channels, weight, bias, noise_mean, noise_std):
    if weight.dim() != 3 or weight.shape[:2] != (num_taps, 2 * channels + 1):
        raise ValueError(f"feature_diff: weight must be (L, 2C+1, D) = ({num_taps}, {2 * channels + 1}, D), "
                         f"got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[2],):
        raise ValueError(f"feature_diff: bias must be ({weight.shape[2]},), got {tuple(bias.shape)}")
    for name, stat in (("noise_mean", noise_mean), ("noise_std", noise_std)):
        if stat is not None and stat.shape != weight.shape[:2]:
            raise ValueError(f"feature_diff: {name} must be {tuple(weight.shape[:2])}, got {tuple(stat.shape)}")
    for name, tensor in (("weight", weight), ("bias", bias), ("noise_mean", noise_mean), ("noise_std", noise_std)):
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f"feature_diff: {name} must be a float tensor, got {tensor.dtype}")


def _forward(f_orig, f_edit, weight, bias, noise_mean, noise_std, save_stats):
    """Launches the persistent forward kernel: (B, N, D) output and, if asked, the (L, 5, B*N)
    token stats."""
    f_orig, (stride_xb, stride_xn) = _token_strides(f_orig)
    f_edit, (stride_yb, stride_yn) = _token_strides(f_edit)
    batch, tokens, channels = f_orig[0].shape
    num_taps, rows, out_features = len(f_orig), batch * tokens, weight.shape[2]
    device = weight.device
    out = torch.empty(batch, tokens, out_features, device=device, dtype=f_orig[0].dtype)
    stats = torch.empty(num_taps, NUM_STATS, rows, device=device, dtype=torch.float32) if save_stats else None
    dot_dtype, dot_precision = dot_config(f_orig[0].dtype)
    if dot_dtype != tl.float32:
        # Training's fp32 master projection as the MMA operand it becomes anyway: half the bytes
        # per tile, and the tiles go to shared memory without a conversion in registers.
        weight = weight.to(f_orig[0].dtype)
    weight = weight.contiguous()
    whitened = noise_mean is not None or noise_std is not None
    block_m, block_c = FORWARD_BLOCK_M, _forward_block_c(device, channels, whitened)
    block_d = _block_d(out_features, dot_dtype, max_block_d=FORWARD_BLOCK_D)
    stages = FORWARD_STAGES - 1 if whitened else FORWARD_STAGES
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(out_features, block_d)
    num_programs = min(tiles, _num_sms(device))
    _feature_diff_forward_kernel[(num_programs,)](
        f_orig, f_edit, weight,
        bias.contiguous() if bias is not None else weight,
        noise_mean.contiguous() if noise_mean is not None else weight,
        noise_std.contiguous() if noise_std is not None else weight,
        out, stats if save_stats else out, rows, tokens, channels, out_features,
        stride_xb, stride_xn, stride_yb, stride_yn, NUM_STATS * rows,
        NUM_TAPS=num_taps, HAS_BIAS=bias is not None, HAS_MEAN=noise_mean is not None,
        HAS_STD=noise_std is not None, SAVE_STATS=save_stats, DOT_DTYPE=dot_dtype,
        DOT_PRECISION=dot_precision, LN_EPS=LN_EPS, COS_EPS=COS_EPS, NUM_PROGRAMS=num_programs,
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_D=block_d, STAGES=stages, num_warps=FORWARD_WARPS,
    )
    return out, stats


def _weight_grad(f_orig, f_edit, stats, noise_mean, noise_std, grad_out):
    """grad of the projection weight, (L, 2C+1, D) fp32: d_w^T grad_out per tap, d rebuilt on the fly."""
    f_orig, (stride_xb, stride_xn) = _token_strides(f_orig)
    f_edit, (stride_yb, stride_yn) = _token_strides(f_edit)
    batch, tokens, channels = f_orig[0].shape
    rows, out_features = batch * tokens, grad_out.shape[-1]
    grad_rows = grad_out.reshape(rows, out_features)
    device = grad_out.device
    dot_dtype, dot_precision = dot_config(grad_out.dtype)
    # A (2*BLOCK_C, BLOCK_D) fp32 accumulator per program: half the forward's width fits it.
    block_c, block_d = _block_c(channels), _block_d(out_features, dot_dtype, max_block_d=128)
    # Split the tokens until there are about two programs per SM (a few in the interpreter, which
    # runs the split path in CI); the partial sums are added on the host.
    target_programs = 2 * _num_sms(device)
    tiles = triton.cdiv(channels, block_c) * triton.cdiv(out_features, block_d)
    splits = max(1, min(triton.cdiv(target_programs, tiles), triton.cdiv(rows, BLOCK_M)))
    tokens_per_split = triton.cdiv(triton.cdiv(rows, splits), BLOCK_M) * BLOCK_M
    splits = triton.cdiv(rows, tokens_per_split)
    num_taps, num_channels = len(f_orig), 2 * channels + 1
    grad_weight = torch.empty(num_taps, num_channels, out_features, device=device, dtype=torch.float32)
    partial = torch.empty(splits, 2 * channels, out_features, device=device, dtype=torch.float32)
    grid = (triton.cdiv(channels, block_c), triton.cdiv(out_features, block_d), splits)
    for tap in range(num_taps):
        _feature_diff_weight_grad_kernel[grid](
            f_orig[tap], f_edit[tap], stats[tap],
            noise_mean.contiguous() if noise_mean is not None else stats,
            noise_std.contiguous() if noise_std is not None else stats,
            grad_rows, partial, rows, tokens, channels, out_features, tokens_per_split, tap * num_channels,
            stride_xb, stride_xn, stride_yb, stride_yn, grad_rows.stride(0), grad_rows.stride(1),
            HAS_MEAN=noise_mean is not None, HAS_STD=noise_std is not None, DOT_DTYPE=dot_dtype,
            DOT_PRECISION=dot_precision, BLOCK_M=BLOCK_M, BLOCK_C=block_c, BLOCK_D=block_d,
            num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
        torch.sum(partial, dim=0, out=grad_weight[tap, : 2 * channels])
    cos_rows = stats[:, STAT_ONE_MINUS_COS]
    if noise_mean is not None:
        cos_rows = cos_rows - noise_mean[:, 2 * channels, None]
    if noise_std is not None:
        cos_rows = cos_rows / noise_std[:, 2 * channels, None]
    grad_weight[:, 2 * channels] = cos_rows @ grad_rows.float()
    return grad_weight


def _stats(f_orig, f_edit):
    """Launches the stats kernel: (mean, std) of d, (L, 2C+1) each, fp32."""
    f_orig, (stride_xb, stride_xn) = _token_strides(f_orig)
    f_edit, (stride_yb, stride_yn) = _token_strides(f_edit)
    batch, tokens, channels = f_orig[0].shape
    num_taps, rows = len(f_orig), batch * tokens
    # Larger token blocks than the forward: fewer partial sums for the host to combine.
    block_m, block_c = 2 * BLOCK_M, _block_c(channels)
    num_blocks = triton.cdiv(rows, block_m)
    device = f_orig[0].device
    block_mean = torch.empty(num_taps, num_blocks, 2 * channels + 1, device=device, dtype=torch.float32)
    block_m2 = torch.empty_like(block_mean)
    _feature_diff_stats_kernel[(num_blocks,)](
        f_orig, f_edit, block_mean, block_m2, rows, tokens, channels,
        stride_xb, stride_xn, stride_yb, stride_yn,
        NUM_TAPS=num_taps, LN_EPS=LN_EPS, COS_EPS=COS_EPS, BLOCK_M=block_m, BLOCK_C=block_c,
        STAGES=NUM_STAGES, num_warps=NUM_WARPS,
    )
    # Chan's combination of the per-block means and centred sums of squares.
    counts = torch.full((num_blocks, 1), float(block_m), device=device)
    counts[-1] = rows - block_m * (num_blocks - 1)
    mean = (block_mean * counts).sum(1) / rows
    m2 = block_m2.sum(1) + (counts * (block_mean - mean[:, None]) ** 2).sum(1)
    return mean, torch.sqrt(m2 / rows)


def reference_token_stats(f_orig, f_edit):
    """The forward's saved token stats in plain PyTorch: (L, 5, B*N) fp32, rows as NUM_STATS says."""
    rows = []
    for x, y in zip(f_orig, f_edit):
        x, y = x.float().flatten(0, 1), y.float().flatten(0, 1)
        var_x, mean_x = torch.var_mean(x, dim=-1, correction=0)
        var_y, mean_y = torch.var_mean(y, dim=-1, correction=0)
        o = F.layer_norm(x, (x.shape[-1],), eps=LN_EPS)
        e = F.layer_norm(y, (y.shape[-1],), eps=LN_EPS)
        one_minus_cos = 1.0 - F.cosine_similarity(o, e, dim=-1, eps=COS_EPS)
        rows.append(torch.stack([mean_x, torch.rsqrt(var_x + LN_EPS), mean_y, torch.rsqrt(var_y + LN_EPS),
                                 one_minus_cos]))
    return torch.stack(rows)


def reference_weight_grad(f_orig, f_edit, noise_mean, noise_std, grad_out):
    """grad of the projection weight in plain PyTorch, (L, 2C+1, D) fp32: whitened d^T grad_out."""
    grad_rows = grad_out.flatten(0, 1).float()
    grads = []
    for level, (o, e) in enumerate(zip(f_orig, f_edit)):
        d = reference._difference_features(o, e).flatten(0, 1)
        if noise_mean is not None:
            d = d - noise_mean[level].float()
        if noise_std is not None:
            d = d / noise_std[level].float()
        grads.append(d.T @ grad_rows)
    return torch.stack(grads)


# The custom ops: Triton where `use_triton` says so (CUDA, or CPU under the interpreter), the
# references elsewhere, so that the same graph traces and runs on every device.

@torch.library.custom_op("sigma_fast::feature_diff", mutates_args=())
def feature_diff_op(f_orig: list[torch.Tensor], f_edit: list[torch.Tensor], weight: torch.Tensor,
                    bias: Optional[torch.Tensor], noise_mean: Optional[torch.Tensor],
                    noise_std: Optional[torch.Tensor], save_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) output and the (L, 5, B*N) fp32 token stats the backward needs ((L, 5, 0) unless
    `save_stats`)."""
    stats = None
    if use_triton(weight.device):
        out, stats = _forward(f_orig, f_edit, weight, bias, noise_mean, noise_std, save_stats)
    else:
        out = reference.feature_diff(f_orig, f_edit, weight, bias, noise_mean, noise_std)
        if save_stats:
            stats = reference_token_stats(f_orig, f_edit)
    if stats is None:
        stats = out.new_empty(len(f_orig), NUM_STATS, 0, dtype=torch.float32)
    return out, stats


@feature_diff_op.register_fake
def _feature_diff_fake(f_orig, f_edit, weight, bias, noise_mean, noise_std, save_stats):
    batch, tokens, _ = f_orig[0].shape
    out = f_orig[0].new_empty(batch, tokens, weight.shape[2])
    stats = out.new_empty(len(f_orig), NUM_STATS, batch * tokens if save_stats else 0, dtype=torch.float32)
    return out, stats


@torch.library.custom_op("sigma_fast::feature_diff_weight_grad", mutates_args=())
def feature_diff_weight_grad_op(f_orig: list[torch.Tensor], f_edit: list[torch.Tensor], stats: torch.Tensor,
                                noise_mean: Optional[torch.Tensor], noise_std: Optional[torch.Tensor],
                                grad_out: torch.Tensor) -> torch.Tensor:
    """grad of feature_diff's weight, (L, 2C+1, D) fp32, from the forward's token stats."""
    if not use_triton(grad_out.device):
        return reference_weight_grad(f_orig, f_edit, noise_mean, noise_std, grad_out)
    batch, tokens, _ = f_orig[0].shape
    if stats.shape[-1] != batch * tokens:
        raise ValueError("feature_diff: the backward needs the token stats of a forward run with save_stats=True")
    return _weight_grad(f_orig, f_edit, stats, noise_mean, noise_std, grad_out)


@feature_diff_weight_grad_op.register_fake
def _feature_diff_weight_grad_fake(f_orig, f_edit, stats, noise_mean, noise_std, grad_out):
    return grad_out.new_empty(len(f_orig), 2 * f_orig[0].shape[2] + 1, grad_out.shape[-1], dtype=torch.float32)


def _feature_diff_setup_context(ctx, inputs, output):
    f_orig, f_edit, weight, bias, noise_mean, noise_std, _ = inputs
    ctx.num_taps = len(f_orig)
    ctx.param_dtypes = tuple(t.dtype if t is not None else None for t in (weight, bias, noise_mean, noise_std))
    ctx.save_for_backward(weight, noise_mean, noise_std, output[1], *f_orig, *f_edit)


def _feature_diff_backward(ctx, grad_out, _grad_stats):
    """Differentiable in the projection and the calibration inputs; the taps are frozen features."""
    weight, noise_mean, noise_std, stats, *taps = ctx.saved_tensors
    f_orig, f_edit = taps[:ctx.num_taps], taps[ctx.num_taps:]
    needs_weight, needs_bias, needs_mean, needs_std = ctx.needs_input_grad[2:6]
    noise_mean32 = noise_mean.float() if noise_mean is not None else None
    noise_std32 = noise_std.float() if noise_std is not None else None
    weight32 = weight.float()
    grad_sum = grad_out.float().sum(dim=(0, 1))  # (D,): sum over tokens of grad_out
    grad_weight = grad_bias = grad_mean = grad_std = None
    full_grad_weight = None
    if needs_weight or needs_std:
        full_grad_weight = feature_diff_weight_grad_op(f_orig, f_edit, stats, noise_mean32, noise_std32, grad_out)
    if needs_weight:
        grad_weight = full_grad_weight
    if needs_bias:
        grad_bias = grad_sum
    # out = sum_k (d_k - mean_k) / std_k * W_k + ..., so d out / d mean_k = -W_k / std_k and
    # d out / d std_k = -d_w,k W_k / std_k; summed against grad_out these are column sums.
    inv_std = 1.0 / noise_std32 if noise_std32 is not None else None
    if needs_mean:
        grad_mean = -(weight32 @ grad_sum)
        if inv_std is not None:
            grad_mean = grad_mean * inv_std
    if needs_std:
        grad_std = -(weight32 * full_grad_weight).sum(-1) * inv_std
    grads = (grad_weight, grad_bias, grad_mean, grad_std)
    grads = tuple(g.to(dtype) if g is not None else None for g, dtype in zip(grads, ctx.param_dtypes))
    return [None] * len(f_orig), [None] * len(f_edit), *grads, None


feature_diff_op.register_autograd(_feature_diff_backward, setup_context=_feature_diff_setup_context)


@torch.library.custom_op("sigma_fast::feature_diff_stats", mutates_args=())
def feature_diff_stats_op(f_orig: list[torch.Tensor], f_edit: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tap channel (mean, std) of d, (L, 2C+1) each, fp32."""
    if use_triton(f_orig[0].device):
        return _stats(f_orig, f_edit)
    return reference.feature_diff_stats(f_orig, f_edit)


@feature_diff_stats_op.register_fake
def _feature_diff_stats_fake(f_orig, f_edit):
    shape = (len(f_orig), 2 * f_orig[0].shape[2] + 1)
    return f_orig[0].new_empty(shape, dtype=torch.float32), f_orig[0].new_empty(shape, dtype=torch.float32)


def fused_feature_diff(f_orig, f_edit, weight, bias=None, noise_mean=None, noise_std=None):
    """`reference.feature_diff` (same arguments and result) as the op sigma_fast::feature_diff,
    differentiable in weight, bias, noise_mean and noise_std."""
    f_orig, f_edit = list(f_orig), list(f_edit)
    _check_taps("feature_diff", f_orig, f_edit)
    _check_params(len(f_orig), f_orig[0].shape[2], weight, bias, noise_mean, noise_std)
    params = (weight, bias, noise_mean, noise_std)
    save_stats = torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)
    out, _ = feature_diff_op(f_orig, f_edit, weight, bias, noise_mean, noise_std, save_stats)
    return out


def fused_feature_diff_stats(f_orig, f_edit):
    """`reference.feature_diff_stats` as the op sigma_fast::feature_diff_stats: (mean, std) of d,
    (L, 2C+1) each, fp32."""
    f_orig, f_edit = list(f_orig), list(f_edit)
    _check_taps("feature_diff_stats", f_orig, f_edit)
    return feature_diff_stats_op(f_orig, f_edit)
