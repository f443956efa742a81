"""Fused bidirectional cross-attention between visual and text tokens (SIGMA's refinement).

The visual tokens of each (batch, head) are split into 2-4 contiguous ranges, one program (CTA)
each, so that B*H*splits programs fill the GPU (`_num_splits`). A program holds its head's text
keys and values (T <= 128 rows, padded to a power of two and masked) and walks its range of N in
blocks. Per block it computes the logits once, as a (text, visual) tile A^T = k_t q_v^T whose 128
padded text rows span two warpgroups: the text side's softmax reduces along its rows, the visual
side's along its columns, and every product is a warpgroup MMA (wgmma) on Hopper.

Forward: the visual side is a complete softmax over the short text axis, written per block
straight into o_v's (B, N, H*d) memory; the text side is an online softmax over the program's
visual tokens (prior bias added), left as partials (running max, sum and unnormalised output per
text token). A second, tiny kernel merges the partials of a (batch, head) into o_t and the text
side's log2-sum-exp, which the backward reuses.

Backward: the same split walk recomputes both softmaxes per block (the text side from the saved
log2-sum-exp), writes dq_v, dv_v and the prior's per-head gradient for the block, and leaves the
range's dk_t, dv_t partial sums; a tiny kernel adds them up.

q_v and v_v may be head-split views of a (B, N, H*d) projection. Forward and backward are PyTorch
custom ops (sigma_fast::bi_attention, ::bi_attention_backward) with fake implementations, so
`torch.compile(fullgraph=True)` traces them and CUDA graphs capture them; each runs its kernels
where `use_triton` says so and its plain PyTorch reference elsewhere.
"""
import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import dot_config, interpreting, use_triton

LOG2E = math.log2(math.e)
MAX_TEXT_TOKENS = 128  # a head's text keys, values and accumulators live in registers and shared memory
HOPPER_SMS = 132  # H100/H200 SXM: what the splits are planned for when no GPU is at hand


@triton.jit
def _load_text(ptr, t_offs, t_valid, d_offs, d_valid, stride_t):
    """A head's (BLOCK_T, BLOCK_DH) text rows as fp32, zero past T and d."""
    mask = t_valid[:, None] & d_valid[None, :]
    return tl.load(ptr + t_offs[:, None] * stride_t + d_offs[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _text_is_real(mask_ptr, b, stride_mask_b, t_offs, t_valid, HAS_MASK: tl.constexpr):
    """True for text tokens that exist (t < T) and are not padding."""
    if HAS_MASK:
        return t_valid & (tl.load(mask_ptr + b * stride_mask_b + t_offs, mask=t_valid, other=0) != 0)
    return t_valid


@triton.jit
def _head_text(pid, H, T, HEAD_DIM, k_ptr, vt_ptr, mask_ptr, stride_kb, stride_kh, stride_kt, stride_vtb,
               stride_vth, stride_vtt, stride_mask_b, HAS_MASK: tl.constexpr, DOT_DTYPE: tl.constexpr,
               BLOCK_T: tl.constexpr, BLOCK_DH: tl.constexpr):
    """What every kernel's (batch, head) program holds: b, h, the text and head-dim offsets with
    their bounds, which text tokens are real, and the head's text keys and values (DOT_DTYPE)."""
    b = pid // H
    h = pid % H
    t_offs = tl.arange(0, BLOCK_T)
    t_valid = t_offs < T
    d_offs = tl.arange(0, BLOCK_DH)
    d_valid = d_offs < HEAD_DIM
    text_real = _text_is_real(mask_ptr, b, stride_mask_b, t_offs, t_valid, HAS_MASK)
    k = _load_text(k_ptr + b * stride_kb + h * stride_kh, t_offs, t_valid, d_offs, d_valid, stride_kt)
    v_t = _load_text(vt_ptr + b * stride_vtb + h * stride_vth, t_offs, t_valid, d_offs, d_valid, stride_vtt)
    return b, h, t_offs, t_valid, d_offs, d_valid, text_real, k.to(DOT_DTYPE), v_t.to(DOT_DTYPE)


@triton.jit
def _split_range(N, blocks_per_split, BLOCK_N: tl.constexpr):
    """[begin, end) of the visual tokens this program's split walks."""
    begin = tl.program_id(1) * blocks_per_split * BLOCK_N
    return begin, tl.minimum(N, begin + blocks_per_split * BLOCK_N)


@triton.jit
def _visual_softmax(logits, text_real):
    """Softmax of (BLOCK_T, BLOCK_N) logits (log2 units) over the text axis, padded text excluded."""
    logits = tl.where(text_real[:, None], logits, float("-inf"))
    probs = tl.exp2(logits - tl.max(logits, 0)[None, :])
    return probs / tl.sum(probs, 0)[None, :]


@triton.jit
def _text_logits(logits, prior_ptr, b, stride_prior_b, n_offs, n_valid, HAS_PRIOR: tl.constexpr):
    """(BLOCK_T, BLOCK_N) logits of the text side in log2 units, prior bias added, tokens past N at -inf."""
    if HAS_PRIOR:
        prior = tl.load(prior_ptr + b * stride_prior_b + n_offs, mask=n_valid, other=0.0).to(tl.float32)
        logits += prior[None, :] * 1.4426950408889634  # log2(e): the logits are in log2 units
    return tl.where(n_valid[None, :], logits, float("-inf"))


@triton.jit
def _bi_attention_forward_kernel(
    q_ptr, k_ptr, vv_ptr, vt_ptr, prior_ptr, mask_ptr, ov_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
    H, N, T, HEAD_DIM, qk_scale, blocks_per_split,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kt,
    stride_vvb, stride_vvh, stride_vvn, stride_vtb, stride_vth, stride_vtt,
    stride_ovb, stride_ovh, stride_ovn, stride_prior_b, stride_mask_b,
    HAS_PRIOR: tl.constexpr, HAS_MASK: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_DH: tl.constexpr,
):
    # grid (B*H, splits): o_v for the split's visual tokens, the text side's partials
    pid = tl.program_id(0)
    b, h, t_offs, t_valid, d_offs, d_valid, text_real, k, v_t = _head_text(
        pid, H, T, HEAD_DIM, k_ptr, vt_ptr, mask_ptr, stride_kb, stride_kh, stride_kt, stride_vtb, stride_vth,
        stride_vtt, stride_mask_b, HAS_MASK, DOT_DTYPE, BLOCK_T, BLOCK_DH)
    q_head = q_ptr + b.to(tl.int64) * stride_qb + h * stride_qh
    vv_head = vv_ptr + b.to(tl.int64) * stride_vvb + h * stride_vvh
    ov_head = ov_ptr + b.to(tl.int64) * stride_ovb + h * stride_ovh
    text_max = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    text_sum = tl.zeros((BLOCK_T,), tl.float32)
    text_acc = tl.zeros((BLOCK_T, BLOCK_DH), tl.float32)
    n_begin, n_end = _split_range(N, blocks_per_split, BLOCK_N)
    for n_start in range(n_begin, n_end, BLOCK_N):
        n_offs = n_start + tl.arange(0, BLOCK_N)
        n_valid = n_offs < N
        row_mask = n_valid[:, None] & d_valid[None, :]
        q = tl.load(q_head + n_offs[:, None] * stride_qn + d_offs[None, :], mask=row_mask, other=0.0).to(DOT_DTYPE)
        v_v = tl.load(vv_head + n_offs[:, None] * stride_vvn + d_offs[None, :], mask=row_mask,
                      other=0.0).to(DOT_DTYPE)

        logits = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_T, BLOCK_N)
        visual_probs = _visual_softmax(logits, text_real)
        o_v = tl.dot(tl.trans(visual_probs.to(DOT_DTYPE)), v_t, input_precision=DOT_PRECISION)  # (BLOCK_N, d)
        tl.store(ov_head + n_offs[:, None] * stride_ovn + d_offs[None, :], o_v.to(ov_ptr.dtype.element_ty),
                 mask=row_mask)

        text_logits = _text_logits(logits, prior_ptr, b, stride_prior_b, n_offs, n_valid, HAS_PRIOR)
        new_max = tl.maximum(text_max, tl.max(text_logits, 1))
        # A text token whose logits so far are all -inf (a -inf prior) keeps a zero sum, not NaN.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp2(text_max - safe_max)
        text_probs = tl.exp2(text_logits - safe_max[:, None])
        text_sum = text_sum * rescale + tl.sum(text_probs, 1)
        text_acc = tl.dot(text_probs.to(DOT_DTYPE), v_v, text_acc * rescale[:, None], input_precision=DOT_PRECISION)
        text_max = new_max
    part = pid * tl.num_programs(1) + tl.program_id(1)  # this (batch, head, split) among the partials
    tl.store(part_acc_ptr + part.to(tl.int64) * T * HEAD_DIM + t_offs[:, None] * HEAD_DIM + d_offs[None, :],
             text_acc, mask=t_valid[:, None] & d_valid[None, :])
    tl.store(part_max_ptr + part * T + t_offs, text_max, mask=t_valid)
    tl.store(part_sum_ptr + part * T + t_offs, text_sum, mask=t_valid)


@triton.jit
def _bi_attention_text_merge_kernel(
    part_acc_ptr, part_max_ptr, part_sum_ptr, mask_ptr, ot_ptr, lse_ptr, H, T, HEAD_DIM, splits, stride_mask_b,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_DH: tl.constexpr,
):
    # grid (B*H,): o_t (T, d) and the log2-sum-exp (T,) of one (batch, head) from its splits' partials
    pid = tl.program_id(0)
    t_offs = tl.arange(0, BLOCK_T)
    t_valid = t_offs < T
    d_offs = tl.arange(0, BLOCK_DH)
    text_mask_2d = t_valid[:, None] & (d_offs < HEAD_DIM)[None, :]
    text_max = tl.full((BLOCK_T,), float("-inf"), tl.float32)
    for split in range(splits):
        part = pid * splits + split
        text_max = tl.maximum(text_max, tl.load(part_max_ptr + part * T + t_offs, mask=t_valid, other=0.0))
    safe_max = tl.where(text_max == float("-inf"), 0.0, text_max)
    text_sum = tl.zeros((BLOCK_T,), tl.float32)
    text_acc = tl.zeros((BLOCK_T, BLOCK_DH), tl.float32)
    for split in range(splits):
        part = pid * splits + split
        weight = tl.exp2(tl.load(part_max_ptr + part * T + t_offs, mask=t_valid, other=0.0) - safe_max)
        text_sum += weight * tl.load(part_sum_ptr + part * T + t_offs, mask=t_valid, other=1.0)  # no 0/0 past T
        acc = tl.load(part_acc_ptr + part.to(tl.int64) * T * HEAD_DIM + t_offs[:, None] * HEAD_DIM + d_offs[None, :],
                      mask=text_mask_2d, other=0.0)
        text_acc += weight[:, None] * acc
    b = pid // H
    text_real = _text_is_real(mask_ptr, b, stride_mask_b, t_offs, t_valid, HAS_MASK)
    o_t = tl.where(text_real[:, None], text_acc / text_sum[:, None], 0.0)
    tl.store(ot_ptr + pid.to(tl.int64) * T * HEAD_DIM + t_offs[:, None] * HEAD_DIM + d_offs[None, :],
             o_t.to(ot_ptr.dtype.element_ty), mask=text_mask_2d)
    tl.store(lse_ptr + pid * T + t_offs, text_max + tl.log2(text_sum), mask=t_valid)


@triton.jit
def _bi_attention_backward_kernel(
    q_ptr, k_ptr, vv_ptr, vt_ptr, prior_ptr, mask_ptr, ot_ptr, lse_ptr, dov_ptr, dot_ptr,
    dq_ptr, dvv_ptr, dprior_ptr, part_dk_ptr, part_dvt_ptr,
    H, N, T, HEAD_DIM, qk_scale, scale, blocks_per_split,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kt,
    stride_vvb, stride_vvh, stride_vvn, stride_vtb, stride_vth, stride_vtt,
    stride_dovb, stride_dovh, stride_dovn, stride_gb, stride_gh, stride_gn, stride_prior_b, stride_mask_b,
    HAS_PRIOR: tl.constexpr, HAS_MASK: tl.constexpr, PRIOR_GRAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_DH: tl.constexpr,
):
    # grid (B*H, splits): dq_v, dv_v, the prior's gradient for the split's visual tokens, and the
    # split's partial dk_t / scale and dv_t
    pid = tl.program_id(0)
    b, h, t_offs, t_valid, d_offs, d_valid, text_real, k, v_t = _head_text(
        pid, H, T, HEAD_DIM, k_ptr, vt_ptr, mask_ptr, stride_kb, stride_kh, stride_kt, stride_vtb, stride_vth,
        stride_vtt, stride_mask_b, HAS_MASK, DOT_DTYPE, BLOCK_T, BLOCK_DH)
    # Padded text rows of o_t are constant zeros: their gradient stops here.
    d_ot = _load_text(dot_ptr + pid * T * HEAD_DIM, t_offs, text_real, d_offs, d_valid, HEAD_DIM)
    o_t = _load_text(ot_ptr + pid * T * HEAD_DIM, t_offs, t_valid, d_offs, d_valid, HEAD_DIM)
    text_delta = tl.sum(d_ot * o_t, 1)  # rowsum(dO_t * O_t): the softmax backward's correction
    d_ot = d_ot.to(DOT_DTYPE)
    lse = tl.load(lse_ptr + pid * T + t_offs, mask=t_valid, other=0.0)
    q_head = q_ptr + b.to(tl.int64) * stride_qb + h * stride_qh
    vv_head = vv_ptr + b.to(tl.int64) * stride_vvb + h * stride_vvh
    dov_head = dov_ptr + b.to(tl.int64) * stride_dovb + h * stride_dovh
    grad_head = b.to(tl.int64) * stride_gb + h * stride_gh  # this head in the dq_v and dv_v outputs
    dk_acc = tl.zeros((BLOCK_T, BLOCK_DH), tl.float32)
    dvt_acc = tl.zeros((BLOCK_T, BLOCK_DH), tl.float32)
    n_begin, n_end = _split_range(N, blocks_per_split, BLOCK_N)
    for n_start in range(n_begin, n_end, BLOCK_N):
        n_offs = n_start + tl.arange(0, BLOCK_N)
        n_valid = n_offs < N
        row_mask = n_valid[:, None] & d_valid[None, :]
        q = tl.load(q_head + n_offs[:, None] * stride_qn + d_offs[None, :], mask=row_mask, other=0.0).to(DOT_DTYPE)
        v_v = tl.load(vv_head + n_offs[:, None] * stride_vvn + d_offs[None, :], mask=row_mask,
                      other=0.0).to(DOT_DTYPE)
        d_ov = tl.load(dov_head + n_offs[:, None] * stride_dovn + d_offs[None, :], mask=row_mask,
                       other=0.0).to(DOT_DTYPE)
        row_offsets = grad_head + n_offs[:, None] * stride_gn + d_offs[None, :]

        logits = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_T, BLOCK_N)

        visual_probs = _visual_softmax(logits, text_real)
        dvt_acc = tl.dot(visual_probs.to(DOT_DTYPE), d_ov, dvt_acc, input_precision=DOT_PRECISION)
        visual_dprobs = tl.dot(v_t, tl.trans(d_ov), input_precision=DOT_PRECISION)
        dlogits = visual_probs * (visual_dprobs - tl.sum(visual_probs * visual_dprobs, 0)[None, :])

        text_logits = _text_logits(logits, prior_ptr, b, stride_prior_b, n_offs, n_valid, HAS_PRIOR)
        text_probs = tl.where(text_real[:, None], tl.exp2(text_logits - lse[:, None]), 0.0)
        d_vv = tl.dot(tl.trans(text_probs.to(DOT_DTYPE)), d_ot, input_precision=DOT_PRECISION)  # (BLOCK_N, d)
        tl.store(dvv_ptr + row_offsets, d_vv.to(dvv_ptr.dtype.element_ty), mask=row_mask)
        text_dprobs = tl.dot(d_ot, tl.trans(v_v), input_precision=DOT_PRECISION)
        text_dlogits = text_probs * (text_dprobs - text_delta[:, None])
        if PRIOR_GRAD:
            tl.store(dprior_ptr + pid.to(tl.int64) * N + n_offs, tl.sum(text_dlogits, 0), mask=n_valid)

        dlogits = (dlogits + text_dlogits).to(DOT_DTYPE)  # both directions' gradient of the shared logits
        d_q = tl.dot(tl.trans(dlogits), k, input_precision=DOT_PRECISION) * scale  # (BLOCK_N, d)
        tl.store(dq_ptr + row_offsets, d_q.to(dq_ptr.dtype.element_ty), mask=row_mask)
        dk_acc = tl.dot(dlogits, q, dk_acc, input_precision=DOT_PRECISION)
    part = (pid * tl.num_programs(1) + tl.program_id(1)).to(tl.int64) * T * HEAD_DIM
    text_offsets = t_offs[:, None] * HEAD_DIM + d_offs[None, :]
    text_mask_2d = t_valid[:, None] & d_valid[None, :]
    tl.store(part_dk_ptr + part + text_offsets, dk_acc, mask=text_mask_2d)
    tl.store(part_dvt_ptr + part + text_offsets, dvt_acc, mask=text_mask_2d)


@triton.jit
def _bi_attention_text_grad_merge_kernel(
    part_dk_ptr, part_dvt_ptr, dk_ptr, dvt_ptr, T, HEAD_DIM, splits, scale,
    BLOCK_T: tl.constexpr, BLOCK_DH: tl.constexpr,
):
    # grid (B*H,): dk_t and dv_t (T, d) of one (batch, head) summed over its splits' partials
    pid = tl.program_id(0)
    t_offs = tl.arange(0, BLOCK_T)
    d_offs = tl.arange(0, BLOCK_DH)
    text_offsets = t_offs[:, None] * HEAD_DIM + d_offs[None, :]
    text_mask_2d = (t_offs < T)[:, None] & (d_offs < HEAD_DIM)[None, :]
    dk = tl.zeros((BLOCK_T, BLOCK_DH), tl.float32)
    dvt = tl.zeros((BLOCK_T, BLOCK_DH), tl.float32)
    for split in range(splits):
        part = (pid * splits + split).to(tl.int64) * T * HEAD_DIM
        dk += tl.load(part_dk_ptr + part + text_offsets, mask=text_mask_2d, other=0.0)
        dvt += tl.load(part_dvt_ptr + part + text_offsets, mask=text_mask_2d, other=0.0)
    head = pid.to(tl.int64) * T * HEAD_DIM
    tl.store(dk_ptr + head + text_offsets, (dk * scale).to(dk_ptr.dtype.element_ty), mask=text_mask_2d)
    tl.store(dvt_ptr + head + text_offsets, dvt.to(dvt_ptr.dtype.element_ty), mask=text_mask_2d)


def _config(T, head_dim, dtype, backward):
    """(BLOCK_N, BLOCK_T, BLOCK_DH, launch options): one fixed config per shape, one program per SM.

    Chosen from compile reports (bench/compile_check.py, T = 96, d = 32, bf16). Hopper:
    BLOCK_N = 64 is the smallest M a warpgroup MMA (wgmma) takes, so every dot reaches its tensor
    cores; 8 warps put the (BLOCK_T, BLOCK_N) tiles' 128 rows on two warpgroups. The forward
    needs about 160 registers (capped at 128 for two programs per SM it spilled a few bytes, or
    not, depending on the Triton version and the prior's dtype) and keeps three blocks of loads in
    flight; the backward needs about 250. Older GPUs (mma.sync) spill at BLOCK_N = 64 and take 32.
    T = 96 pads to BLOCK_T = 128 (masked), and on Hopper short text pads to 64, a wgmma's M.
    """
    block_t = max(16, triton.next_power_of_2(T))
    block_dh = max(16, triton.next_power_of_2(head_dim))
    if interpreting():
        return 64, block_t, block_dh, {"num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:
        # Exact fp32 dots run on FMA units with whole text tiles in registers: small blocks, no pipelining.
        return 16, block_t, block_dh, {"num_warps": 8, "num_stages": 1}
    launch = {"num_warps": 8, "num_stages": 2}
    target = triton.runtime.driver.active.get_current_target()
    if target.backend != "cuda" or target.arch < 90:
        return 32, block_t, block_dh, launch
    block_t = max(64, block_t)  # the text tile's rows are a wgmma's M
    if backward or block_dh > 32:
        return 64, block_t, block_dh, launch
    return 64, block_t, block_dh, {**launch, "num_stages": 3}


@functools.lru_cache(maxsize=None)
def _sm_count(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return HOPPER_SMS


def _num_splits(programs, n_blocks, slots):
    """How many programs share one (batch, head)'s N blocks: 2 to 4 (at most one per block), the
    fewest whose last wave of programs fills the GPU's `slots` (one program per SM) to 90%, else
    the fullest."""
    if n_blocks < 2:
        return 1
    candidates = range(2, min(4, n_blocks) + 1)

    def fill(splits):
        ctas = programs * splits
        return ctas / (triton.cdiv(ctas, slots) * slots)

    full = [splits for splits in candidates if fill(splits) >= 0.9]
    return full[0] if full else max(candidates, key=fill)


def _split_plan(programs, tokens, block_n, device, splits):
    """(splits, blocks_per_split) for `programs` (batch, head) pairs of `tokens` visual tokens;
    `splits` None picks them from N and the SM count."""
    n_blocks = triton.cdiv(tokens, block_n)
    if splits is None:
        splits = _num_splits(programs, n_blocks, _sm_count(device))
    blocks_per_split = triton.cdiv(n_blocks, min(splits, n_blocks))
    return triton.cdiv(n_blocks, blocks_per_split), blocks_per_split


def _head_strides(tensor):
    """(stride_b, stride_h, stride_row) of a (B, H, rows, d) tensor with unit stride along d."""
    return tensor.stride(0), tensor.stride(1), tensor.stride(2)


def _unit_last_stride(tensor):
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _check_inputs(q_v, k_t, v_v, v_t, prior_bias, text_mask):
    for name, tensor in (("q_v", q_v), ("k_t", k_t), ("v_v", v_v), ("v_t", v_t)):
        if tensor.dim() != 4:
            raise ValueError(f"bi_attention: {name} must be (B, H, rows, d), got {tuple(tensor.shape)}")
        if tensor.dtype != q_v.dtype:
            raise TypeError(f"bi_attention: q_v, k_t, v_v, v_t must share one dtype, got {q_v.dtype} and "
                            f"{tensor.dtype} ({name})")
    if q_v.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"bi_attention: inputs must be float32, float16 or bfloat16, got {q_v.dtype}")
    batch, heads, tokens, head_dim = q_v.shape
    text_len = k_t.shape[2]
    if v_v.shape != q_v.shape:
        raise ValueError(f"bi_attention: v_v must match q_v's shape {tuple(q_v.shape)}, got {tuple(v_v.shape)}")
    if k_t.shape != (batch, heads, text_len, head_dim) or v_t.shape != k_t.shape:
        raise ValueError(f"bi_attention: k_t and v_t must be (B, H, T, d) = ({batch}, {heads}, T, {head_dim}), "
                         f"got {tuple(k_t.shape)} and {tuple(v_t.shape)}")
    if not 1 <= text_len <= MAX_TEXT_TOKENS:
        raise ValueError(f"bi_attention: the fused kernel takes 1 to {MAX_TEXT_TOKENS} text tokens, got {text_len}")
    if tokens == 0:
        raise ValueError("bi_attention: needs at least one visual token")
    if prior_bias is not None and prior_bias.shape != (batch, tokens):
        raise ValueError(f"bi_attention: prior_bias must be (B, N) = ({batch}, {tokens}), "
                         f"got {tuple(prior_bias.shape)}")
    if text_mask is not None and (text_mask.shape != (batch, text_len) or text_mask.dtype != torch.bool):
        raise ValueError(f"bi_attention: text_mask must be a bool (B, T) = ({batch}, {text_len}) tensor, "
                         f"got {text_mask.dtype} {tuple(text_mask.shape)}")


def _heads_last(batch, heads, rows, head_dim, like):
    """A (B, rows, H, d) tensor and its (B, H, rows, d) view: outputs written so that the heads
    concatenate back to (B, rows, H*d) for free."""
    out = torch.empty(batch, rows, heads, head_dim, device=like.device, dtype=like.dtype)
    return out, out.transpose(1, 2)


def _forward(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale, splits=None):
    """Launches the forward and the text-side merge: o_v as (B, N, H, d) memory, o_t (B, H, T, d)
    and the text side's log2-sum-exp (B, H, T) fp32. `splits` None plans them (`_split_plan`)."""
    batch, heads, tokens, head_dim = q_v.shape
    text_len = k_t.shape[2]
    o_v, o_v_heads = _heads_last(batch, heads, tokens, head_dim, q_v)
    o_t = torch.empty(batch, heads, text_len, head_dim, device=q_v.device, dtype=q_v.dtype)
    lse = torch.empty(batch, heads, text_len, device=q_v.device, dtype=torch.float32)
    block_n, block_t, block_dh, launch = _config(text_len, head_dim, q_v.dtype, backward=False)
    splits, blocks_per_split = _split_plan(batch * heads, tokens, block_n, q_v.device, splits)
    partial = lambda *shape: torch.empty(batch * heads, splits, text_len, *shape, device=q_v.device,  # noqa: E731
                                         dtype=torch.float32)
    part_acc, part_max, part_sum = partial(head_dim), partial(), partial()
    dot_dtype, dot_precision = dot_config(q_v.dtype)
    _bi_attention_forward_kernel[(batch * heads, splits)](
        q_v, k_t, v_v, v_t,
        prior_bias if prior_bias is not None else q_v,
        text_mask if text_mask is not None else q_v,
        o_v, part_acc, part_max, part_sum,
        heads, tokens, text_len, head_dim, scale * LOG2E, blocks_per_split,
        *_head_strides(q_v), *_head_strides(k_t), *_head_strides(v_v), *_head_strides(v_t),
        *_head_strides(o_v_heads),
        prior_bias.stride(0) if prior_bias is not None else 0,
        text_mask.stride(0) if text_mask is not None else 0,
        HAS_PRIOR=prior_bias is not None, HAS_MASK=text_mask is not None, DOT_DTYPE=dot_dtype,
        DOT_PRECISION=dot_precision, BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_DH=block_dh, **launch,
    )
    _bi_attention_text_merge_kernel[(batch * heads,)](
        part_acc, part_max, part_sum, text_mask if text_mask is not None else q_v, o_t, lse,
        heads, text_len, head_dim, splits, text_mask.stride(0) if text_mask is not None else 0,
        HAS_MASK=text_mask is not None, BLOCK_T=block_t, BLOCK_DH=block_dh, num_warps=4,
    )
    return o_v, o_t, lse


def _backward(q_v, k_t, v_v, v_t, prior_bias, text_mask, o_t, lse, grad_o_v, grad_o_t, scale, prior_grad,
              splits=None):
    """Launches the backward and the text-gradient merge: dq_v and dv_v as (B, N, H, d) memory,
    dk_t, dv_t (B, H, T, d) and, if `prior_grad`, the prior's gradient (B, N)."""
    batch, heads, tokens, head_dim = q_v.shape
    text_len = k_t.shape[2]
    d_q, d_q_heads = _heads_last(batch, heads, tokens, head_dim, q_v)
    d_vv, d_vv_heads = _heads_last(batch, heads, tokens, head_dim, q_v)
    d_k = torch.empty(batch, heads, text_len, head_dim, device=q_v.device, dtype=q_v.dtype)
    d_vt = torch.empty_like(d_k)
    d_prior_heads = torch.empty(batch, heads, tokens if prior_grad else 0, device=q_v.device, dtype=torch.float32)
    grad_o_v = _unit_last_stride(grad_o_v)
    block_n, block_t, block_dh, launch = _config(text_len, head_dim, q_v.dtype, backward=True)
    splits, blocks_per_split = _split_plan(batch * heads, tokens, block_n, q_v.device, splits)
    part_dk, part_dvt = (torch.empty(batch * heads, splits, text_len, head_dim, device=q_v.device,
                                     dtype=torch.float32) for _ in range(2))
    dot_dtype, dot_precision = dot_config(q_v.dtype)
    _bi_attention_backward_kernel[(batch * heads, splits)](
        q_v, k_t, v_v, v_t,
        prior_bias if prior_bias is not None else q_v,
        text_mask if text_mask is not None else q_v,
        o_t, lse, grad_o_v, grad_o_t.contiguous(),
        d_q, d_vv, d_prior_heads if prior_grad else d_q, part_dk, part_dvt,
        heads, tokens, text_len, head_dim, scale * LOG2E, scale, blocks_per_split,
        *_head_strides(q_v), *_head_strides(k_t), *_head_strides(v_v), *_head_strides(v_t),
        *_head_strides(grad_o_v), *_head_strides(d_q_heads),
        prior_bias.stride(0) if prior_bias is not None else 0,
        text_mask.stride(0) if text_mask is not None else 0,
        HAS_PRIOR=prior_bias is not None, HAS_MASK=text_mask is not None, PRIOR_GRAD=prior_grad,
        DOT_DTYPE=dot_dtype, DOT_PRECISION=dot_precision, BLOCK_N=block_n, BLOCK_T=block_t,
        BLOCK_DH=block_dh, **launch,
    )
    _bi_attention_text_grad_merge_kernel[(batch * heads,)](
        part_dk, part_dvt, d_k, d_vt, text_len, head_dim, splits, scale,
        BLOCK_T=block_t, BLOCK_DH=block_dh, num_warps=4,
    )
    return d_q, d_k, d_vv, d_vt, d_prior_heads.sum(1)  # (B, N), or (B, 0) without prior_grad


def _logits(q_v, k_t, prior_bias, text_mask, scale):
    """The reference's fp32 logits: visual side (B, H, N, T), padded text at -inf; text side
    (B, H, T, N), prior bias added."""
    logits = torch.einsum("bhnd,bhtd->bhnt", q_v.float(), k_t.float()) * scale
    visual_logits, text_logits = logits, logits.transpose(-1, -2)
    if text_mask is not None:
        visual_logits = logits.masked_fill(~text_mask[:, None, None, :], float("-inf"))
    if prior_bias is not None:
        text_logits = text_logits + prior_bias.float()[:, None, None, :]
    return visual_logits, text_logits


def reference_forward(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale):
    """The op's outputs in plain PyTorch: `reference.bi_attention` with o_v as (B, N, H, d), and
    the text side's log2-sum-exp (B, H, T) fp32."""
    o_v, o_t = reference.bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale)
    _, text_logits = _logits(q_v, k_t, prior_bias, text_mask, scale)
    return o_v.transpose(1, 2).contiguous(), o_t, torch.logsumexp(text_logits, -1) * LOG2E


def reference_backward(q_v, k_t, v_v, v_t, prior_bias, text_mask, grad_o_v, grad_o_t, scale):
    """Gradients of `reference.bi_attention` by hand, in fp32: dq_v, dk_t, dv_v, dv_t (B, H, ., d)
    and the prior's (B, N)."""
    q, k, v_v, v_t = (t.float() for t in (q_v, k_t, v_v, v_t))
    grad_o_v, grad_o_t = grad_o_v.float(), grad_o_t.float()
    if text_mask is not None:
        grad_o_t = grad_o_t * text_mask[:, None, :, None]  # padded rows of o_t are constant zeros
    visual_logits, text_logits = _logits(q_v, k_t, prior_bias, text_mask, scale)
    visual_probs = torch.softmax(visual_logits, -1)  # (B, H, N, T)
    text_probs = torch.softmax(text_logits, -1)  # (B, H, T, N)
    d_vt = visual_probs.transpose(-1, -2) @ grad_o_v
    d_vv = text_probs.transpose(-1, -2) @ grad_o_t
    visual_dprobs = grad_o_v @ v_t.transpose(-1, -2)
    visual_dlogits = visual_probs * (visual_dprobs - (visual_probs * visual_dprobs).sum(-1, keepdim=True))
    text_dprobs = grad_o_t @ v_v.transpose(-1, -2)
    text_dlogits = text_probs * (text_dprobs - (text_probs * text_dprobs).sum(-1, keepdim=True))
    dlogits = visual_dlogits + text_dlogits.transpose(-1, -2)  # (B, H, N, T)
    return dlogits @ k * scale, dlogits.transpose(-1, -2) @ q * scale, d_vv, d_vt, text_dlogits.sum((1, 2))


# The custom ops: Triton where `use_triton` says so (CUDA, or CPU under the interpreter), the
# reference elsewhere, so that the same graph traces and runs on every device.

@torch.library.custom_op("sigma_fast::bi_attention", mutates_args=())
def bi_attention_op(q_v: torch.Tensor, k_t: torch.Tensor, v_v: torch.Tensor, v_t: torch.Tensor,
                    prior_bias: Optional[torch.Tensor], text_mask: Optional[torch.Tensor],
                    scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """o_v as (B, N, H, d), o_t (B, H, T, d), and the text side's log2-sum-exp (B, H, T) fp32
    (what the backward needs)."""
    if not use_triton(q_v.device):
        return reference_forward(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale)
    q_v, k_t, v_v, v_t = (_unit_last_stride(t) for t in (q_v, k_t, v_v, v_t))
    return _forward(q_v, k_t, v_v, v_t, _kernel_prior(prior_bias), _kernel_mask(text_mask), scale)


@bi_attention_op.register_fake
def _bi_attention_fake(q_v, k_t, v_v, v_t, prior_bias, text_mask, scale):
    batch, heads, tokens, head_dim = q_v.shape
    return (q_v.new_empty(batch, tokens, heads, head_dim), k_t.new_empty(k_t.shape, dtype=q_v.dtype),
            q_v.new_empty(batch, heads, k_t.shape[2], dtype=torch.float32))


@torch.library.custom_op("sigma_fast::bi_attention_backward", mutates_args=())
def bi_attention_backward_op(q_v: torch.Tensor, k_t: torch.Tensor, v_v: torch.Tensor, v_t: torch.Tensor,
                             prior_bias: Optional[torch.Tensor], text_mask: Optional[torch.Tensor],
                             o_t: torch.Tensor, lse: torch.Tensor, grad_o_v: torch.Tensor, grad_o_t: torch.Tensor,
                             scale: float, prior_grad: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients from grad_o_v (B, N, H, d) and grad_o_t (B, H, T, d): dq_v and dv_v as (B, N, H, d),
    dk_t and dv_t (B, H, T, d) in the inputs' dtype, and the prior's (B, N) fp32 ((B, 0) unless
    `prior_grad`)."""
    if use_triton(q_v.device):
        q_v, k_t, v_v, v_t = (_unit_last_stride(t) for t in (q_v, k_t, v_v, v_t))
        return _backward(q_v, k_t, v_v, v_t, _kernel_prior(prior_bias), _kernel_mask(text_mask), o_t, lse,
                         grad_o_v.transpose(1, 2), grad_o_t, scale, prior_grad)
    d_q, d_k, d_vv, d_vt, d_prior = reference_backward(q_v, k_t, v_v, v_t, prior_bias, text_mask,
                                                       grad_o_v.transpose(1, 2), grad_o_t, scale)
    heads_last = lambda t: t.transpose(1, 2).contiguous().to(q_v.dtype)  # noqa: E731
    return (heads_last(d_q), d_k.to(q_v.dtype), heads_last(d_vv), d_vt.to(q_v.dtype),
            d_prior if prior_grad else d_prior[:, :0].contiguous())


@bi_attention_backward_op.register_fake
def _bi_attention_backward_fake(q_v, k_t, v_v, v_t, prior_bias, text_mask, o_t, lse, grad_o_v, grad_o_t, scale,
                                prior_grad):
    batch, heads, tokens, head_dim = q_v.shape
    return (q_v.new_empty(batch, tokens, heads, head_dim), q_v.new_empty(k_t.shape),
            q_v.new_empty(batch, tokens, heads, head_dim), q_v.new_empty(k_t.shape),
            q_v.new_empty(batch, tokens if prior_grad else 0, dtype=torch.float32))


def _bi_attention_setup_context(ctx, inputs, output):
    q_v, k_t, v_v, v_t, prior_bias, text_mask, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q_v, k_t, v_v, v_t, prior_bias, text_mask, output[1], output[2])


def _bi_attention_backward(ctx, grad_o_v, grad_o_t, _grad_lse):
    """Differentiable in q_v, k_t, v_v, v_t and prior_bias."""
    q_v, k_t, v_v, v_t, prior_bias, text_mask, o_t, lse = ctx.saved_tensors
    prior_grad = prior_bias is not None and ctx.needs_input_grad[4]
    d_q, d_k, d_vv, d_vt, d_prior = bi_attention_backward_op(
        q_v, k_t, v_v, v_t, prior_bias, text_mask, o_t, lse, grad_o_v, grad_o_t, ctx.scale, prior_grad)
    d_prior = d_prior.to(prior_bias.dtype) if prior_grad else None
    return d_q.transpose(1, 2), d_k, d_vv.transpose(1, 2), d_vt, d_prior, None, None


bi_attention_op.register_autograd(_bi_attention_backward, setup_context=_bi_attention_setup_context)


def _kernel_prior(prior_bias):
    return _unit_last_stride(prior_bias) if prior_bias is not None else None


def _kernel_mask(text_mask):
    # Triton loads int8 more portably than bool; the mask is tiny.
    return text_mask.to(torch.int8).contiguous() if text_mask is not None else None


def fused_bi_attention(q_v, k_t, v_v, v_t, prior_bias=None, text_mask=None, scale=None):
    """`reference.bi_attention` (same arguments and result) as the op sigma_fast::bi_attention,
    differentiable in q_v, k_t, v_v, v_t and prior_bias. o_v is a (B, H, N, d) view of (B, N, H, d)
    memory, so `o_v.transpose(1, 2).flatten(2)` costs no copy."""
    _check_inputs(q_v, k_t, v_v, v_t, prior_bias, text_mask)
    if scale is None:
        scale = q_v.shape[-1] ** -0.5
    o_v, o_t, _ = bi_attention_op(q_v, k_t, v_v, v_t, prior_bias, text_mask, float(scale))
    return o_v.transpose(1, 2), o_t
