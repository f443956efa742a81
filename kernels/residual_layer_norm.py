"""A ViT block boundary in one pass: x = x + gamma * y; h = LayerNorm(x), optionally h in FP8.

Each program holds ROWS whole rows in registers (BLOCK_C = next power of 2 >= C, masked): it
reads x and y once, writes x_out (rounded to x's dtype) and h once. The LayerNorm runs in fp32 on
the rounded x_out, as Hugging Face's bf16 DINOv2 computes it; its variance is the exact two-pass
one, the row being in registers. The FP8 variant quantises the fp32 h per row to e4m3 instead of
writing it (see `quantize_fp8`), the activation operand of the next FP8 GEMM.

Custom ops (fake implementations for `torch.compile(fullgraph=True)`; inference only, no autograd):
`sigma_fast::residual_layer_norm` and `sigma_fast::residual_layer_norm_fp8` (y given), and
`sigma_fast::layer_norm` and `sigma_fast::layer_norm_fp8` (no residual: a custom op may not return
its input, so the public functions in `sigma_fast.kernels` return x themselves for y=None).
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import common_device, interpreting, use_triton
from sigma_fast.kernels.quantize_fp8 import (
    E4M3_MAX, _store_e4m3_rows, as_rows, check_rows, fp8_kernel_available, row_config)


@triton.jit
def _residual_layer_norm_kernel(
    x_ptr, y_ptr, gamma_ptr, weight_ptr, bias_ptr, x_out_ptr, h_ptr, scale_ptr,
    M, stride_x, stride_y, eps,
    C: tl.constexpr, HAS_Y: tl.constexpr, HAS_GAMMA: tl.constexpr, FP8: tl.constexpr,
    E4M3_MAX: tl.constexpr, EXACT_ROUNDING: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_mask = rows < M
    col_mask = cols < C
    mask = row_mask[:, None] & col_mask[None, :]
    rows64 = rows.to(tl.int64)
    out_offsets = rows64[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_Y:
        update = tl.load(y_ptr + rows64[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_GAMMA:
            update *= tl.load(gamma_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        # Rounded to x's dtype before the LayerNorm reads it, as the unfused model does.
        x = (x.to(tl.float32) + update).to(x_out_ptr.dtype.element_ty)
        tl.store(x_out_ptr + out_offsets, x, mask=mask)
    x = x.to(tl.float32)
    mean = tl.sum(x, 1) / C
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / C + eps)
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    h = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    if FP8:
        # 8 e4m3 bytes per store, as many elements as each bf16 load brings: the wider stores the
        # compiler would pick otherwise cost a layout conversion through shared memory per row block.
        h_offsets = tl.max_contiguous(out_offsets, [1, 8])
        _store_e4m3_rows(h, mask, row_mask, h_ptr, h_offsets, scale_ptr, rows, E4M3_MAX, EXACT_ROUNDING)
    else:
        tl.store(h_ptr + out_offsets, h.to(h_ptr.dtype.element_ty), mask=mask)


def launch_residual_layer_norm(x, y, gamma, weight, bias, eps, fp8):
    """The kernel on x (..., C): (x_out or None, h) or, with fp8, (x_out or None, h_fp8, scale (M, 1)).

    No input checks: the ops check. x_out is None when y is None.
    """
    x_rows = as_rows(x)
    y_rows = as_rows(y) if y is not None else x_rows
    num_rows, channels = x_rows.shape
    device = x.device
    x_out = torch.empty(x.shape, device=device, dtype=x.dtype) if y is not None else None
    h = torch.empty(x.shape, device=device, dtype=torch.float8_e4m3fn if fp8 else x.dtype)
    scale = torch.empty(num_rows, 1, device=device, dtype=torch.float32) if fp8 else None
    block, rows_per_program, num_warps = row_config(channels)
    if num_rows > 0:
        _residual_layer_norm_kernel[(triton.cdiv(num_rows, rows_per_program),)](
            x_rows, y_rows, gamma.contiguous() if gamma is not None else weight, weight.contiguous(),
            bias.contiguous(),
            x_out if x_out is not None else h, h, scale if fp8 else h,
            num_rows, x_rows.stride(0), y_rows.stride(0), eps,
            C=channels, HAS_Y=y is not None, HAS_GAMMA=gamma is not None, FP8=fp8,
            E4M3_MAX=E4M3_MAX, EXACT_ROUNDING=interpreting(), ROWS=rows_per_program, BLOCK_C=block,
            num_warps=num_warps,
        )
    return (x_out, h, scale) if fp8 else (x_out, h)


def check_inputs(op_name, x, y, gamma, weight, bias):
    """One-line errors for inputs outside the contract; returns the common device."""
    check_rows(op_name, x)
    for name, tensor in (("weight", weight), ("bias", bias)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op_name}: {name} must be a tensor, got {type(tensor).__name__}")
    if y is not None and (y.shape != x.shape or y.dtype != x.dtype):
        raise ValueError(f"{op_name}: y must match x's shape and dtype {tuple(x.shape)} {x.dtype}, "
                         f"got {tuple(y.shape)} {y.dtype}")
    channels = x.shape[-1]
    for name, tensor in (("gamma", gamma), ("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        if tensor.shape != (channels,):
            raise ValueError(f"{op_name}: {name} must be ({channels},), got {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{op_name}: {name} must be a float tensor, got {tensor.dtype}")
    return common_device(op_name, x, y, gamma, weight, bias)


def _dense(x, y):
    """Contiguous x and y for the reference, whose outputs would otherwise follow x's strides."""
    return x.contiguous(), y.contiguous()


@torch.library.custom_op("sigma_fast::residual_layer_norm", mutates_args=())
def residual_layer_norm_op(x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
                           bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + gamma * y, LayerNorm of it), both in x's dtype; see `reference.residual_layer_norm`."""
    device = check_inputs("residual_layer_norm", x, y, gamma, weight, bias)
    if use_triton(device):
        return launch_residual_layer_norm(x, y, gamma, weight, bias, eps, fp8=False)
    return reference.residual_layer_norm(*_dense(x, y), gamma, weight, bias, eps)


@residual_layer_norm_op.register_fake
def _(x, y, gamma, weight, bias, eps):
    check_inputs("residual_layer_norm", x, y, gamma, weight, bias)
    return _fake_like(x), _fake_like(x)


@torch.library.custom_op("sigma_fast::layer_norm", mutates_args=())
def layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis in x's dtype, computed in fp32: residual_layer_norm without y."""
    device = check_inputs("layer_norm", x, None, None, weight, bias)
    if use_triton(device):
        return launch_residual_layer_norm(x, None, None, weight, bias, eps, fp8=False)[1]
    return reference.residual_layer_norm(x.contiguous(), None, None, weight, bias, eps)[1]


@layer_norm_op.register_fake
def _(x, weight, bias, eps):
    check_inputs("layer_norm", x, None, None, weight, bias)
    return _fake_like(x)


def _fake_like(x):
    """Fake x_out or h: contiguous, as the kernel and the reference write them."""
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_fp8(x):
    """Fake (h_fp8, scale) for x (..., C)."""
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty((math.prod(x.shape[:-1]), 1), dtype=torch.float32))


@torch.library.custom_op("sigma_fast::residual_layer_norm_fp8", mutates_args=())
def residual_layer_norm_fp8_op(x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
                               bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + gamma * y, e4m3 rows of its fp32 LayerNorm, their scales (M, 1)); see the reference."""
    device = check_inputs("residual_layer_norm_fp8", x, y, gamma, weight, bias)
    if fp8_kernel_available(device):
        return launch_residual_layer_norm(x, y, gamma, weight, bias, eps, fp8=True)
    return reference.residual_layer_norm_fp8(*_dense(x, y), gamma, weight, bias, eps)


@residual_layer_norm_fp8_op.register_fake
def _(x, y, gamma, weight, bias, eps):
    check_inputs("residual_layer_norm_fp8", x, y, gamma, weight, bias)
    return (_fake_like(x), *_fake_fp8(x))


@torch.library.custom_op("sigma_fast::layer_norm_fp8", mutates_args=())
def layer_norm_fp8_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 rows of LayerNorm(x) computed in fp32, and their scales (M, 1)."""
    device = check_inputs("layer_norm_fp8", x, None, None, weight, bias)
    if fp8_kernel_available(device):
        return launch_residual_layer_norm(x, None, None, weight, bias, eps, fp8=True)[1:]
    return reference.residual_layer_norm_fp8(x.contiguous(), None, None, weight, bias, eps)[1:]


@layer_norm_fp8_op.register_fake
def _(x, weight, bias, eps):
    check_inputs("layer_norm_fp8", x, None, None, weight, bias)
    return _fake_fp8(x)
