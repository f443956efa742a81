"""Per-row float8 (e4m3) quantisation, optionally after an exact GELU: fc1's output in FP8 mode.

One pass: each program holds whole rows in registers (BLOCK_K = next power of 2 >= K, masked),
applies GELU in fp32, takes the row's absmax and writes the e4m3 row and its fp32 scale
(absmax / 448, at least 1e-12 / 448), so that x ~= x_fp8 * scale, as `torch._scaled_mm` expects
of a per-token activation scale. The row helpers here are shared with `residual_layer_norm`.

Registered as the custom op `sigma_fast::quantize_fp8_rows` (with a fake implementation, so
`torch.compile(fullgraph=True)` traces it); CUDA tensors run the kernel, CPU tensors the reference
unless `TRITON_INTERPRET=1`. GPUs older than sm_89 have no e4m3 conversion: they take the reference.
"""
import functools
import math

import torch
import triton
import triton.language as tl

from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import interpreting, use_triton

E4M3_MAX = reference.E4M3_MAX
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ELEMENTS_PER_PROGRAM = 4096  # rows per program = this / BLOCK: 4 rows of 768 channels, 1 of 3072


@triton.jit
def _round_to_e4m3(values):
    """values (|v| <= 448, fp32) rounded to the nearest e4m3 value, ties to even, still in fp32.

    Only for the interpreter, whose fp32 -> e4m3 cast rounds ties away from zero and loses a
    factor 2 when rounding carries into the exponent; after this the cast is exact.
    """
    bits = values.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    # e4m3 has 3 mantissa bits; below 2^-6 the values are subnormal with spacing 2^-9.
    step_exponent = tl.maximum(exponent, -6) - 3
    inv_step = ((127 - step_exponent) << 23).to(tl.float32, bitcast=True)
    step = ((127 + step_exponent) << 23).to(tl.float32, bitcast=True)
    # Adding 1.5 * 2^23 rounds |v| / step < 2^22 to an integer, ties to even, in fp32 arithmetic;
    # the sign bit is put back after, so values that round to zero keep it (as the hardware cast does).
    units = (tl.abs(values) * inv_step + 12582912.0) - 12582912.0
    return tl.where(bits < 0, -units, units) * step


@triton.jit
def _store_e4m3_rows(values, mask, row_mask, q_ptr, q_offsets, scale_ptr, rows,
                     E4M3_MAX: tl.constexpr, EXACT_ROUNDING: tl.constexpr):
    """Quantise fp32 rows (ROWS, BLOCK) to e4m3 with one scale per row and store both."""
    absmax = tl.max(tl.where(mask, tl.abs(values), 0.0), 1)
    absmax = tl.maximum(absmax, 1e-12)
    # Correctly rounded divisions (once per row) so the scales match the reference's bits.
    scale = tl.math.div_rn(absmax, E4M3_MAX)
    inv_scale = tl.math.div_rn(E4M3_MAX, absmax)
    scaled = values * inv_scale[:, None]
    scaled = tl.minimum(tl.maximum(scaled, -E4M3_MAX), E4M3_MAX)
    if EXACT_ROUNDING:
        scaled = _round_to_e4m3(scaled)
    tl.store(q_ptr + q_offsets, scaled.to(tl.float8e4nv), mask=mask)
    tl.store(scale_ptr + rows, scale, mask=row_mask)


@triton.jit
def _quantize_fp8_rows_kernel(
    x_ptr, q_ptr, scale_ptr, M, stride_x,
    K: tl.constexpr, APPLY_GELU: tl.constexpr, E4M3_MAX: tl.constexpr,
    EXACT_ROUNDING: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols < K)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if APPLY_GELU:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    _store_e4m3_rows(x, mask, row_mask, q_ptr, rows64[:, None] * K + cols[None, :], scale_ptr, rows,
                     E4M3_MAX, EXACT_ROUNDING)


def row_config(width):
    """(BLOCK, rows per program, num_warps) for a row-wise kernel over rows of `width` elements."""
    block = triton.next_power_of_2(width)
    if interpreting():
        # The interpreter's cost grows with the number of programs: few, large ones.
        return block, max(1, 16384 // block), 1
    return block, max(1, ELEMENTS_PER_PROGRAM // block), 4 if block <= 1024 else 8


@functools.lru_cache(maxsize=None)
def _has_e4m3(device_index):
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def fp8_kernel_available(device):
    """True when the Triton kernels can write e4m3 on `device` (interpreter, or sm_89 and newer)."""
    if not use_triton(device):
        return False
    return device.type != "cuda" or _has_e4m3(device.index if device.index is not None else torch.cuda.current_device())


def as_rows(tensor):
    """tensor (..., K) as a (M, K) view with unit column stride (a copy only if it has none)."""
    rows = tensor.reshape(-1, tensor.shape[-1])
    return rows if rows.stride(1) == 1 else rows.contiguous()


def launch_quantize_fp8_rows(x, apply_gelu):
    """The kernel on x (..., K): (x_fp8 with x's shape, scale (M, 1) fp32). No input checks."""
    rows = as_rows(x)
    num_rows, width = rows.shape
    q = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty(num_rows, 1, device=x.device, dtype=torch.float32)
    block, rows_per_program, num_warps = row_config(width)
    if num_rows > 0:
        _quantize_fp8_rows_kernel[(triton.cdiv(num_rows, rows_per_program),)](
            rows, q, scale, num_rows, rows.stride(0),
            K=width, APPLY_GELU=apply_gelu, E4M3_MAX=E4M3_MAX, EXACT_ROUNDING=interpreting(),
            ROWS=rows_per_program, BLOCK_K=block, num_warps=num_warps,
        )
    return q, scale


def check_rows(op_name, x):
    """One-line errors unless x is a float tensor of rows (..., K) with K > 0."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op_name}: x must be a tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op_name}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{op_name}: x must be rows (..., K) with K > 0, got shape {tuple(x.shape)}")


@torch.library.custom_op("sigma_fast::quantize_fp8_rows", mutates_args=())
def quantize_fp8_rows(x: torch.Tensor, apply_gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantisation of x (..., K), after an exact GELU if asked; see the reference."""
    check_rows("quantize_fp8_rows", x)
    if fp8_kernel_available(x.device):
        return launch_quantize_fp8_rows(x, apply_gelu)
    return reference.quantize_fp8_rows(x, apply_gelu)


@quantize_fp8_rows.register_fake
def _(x, apply_gelu=False):
    check_rows("quantize_fp8_rows", x)
    num_rows = math.prod(x.shape[:-1])
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty((num_rows, 1), dtype=torch.float32))
