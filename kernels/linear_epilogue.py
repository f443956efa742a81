"""Linear layers with fused epilogues for our own DINOv2 forward (frozen backbone, inference only).

One Triton GEMM, out = a @ weight.T with weight in nn.Linear's (N, K) layout, with a constexpr
EPILOGUE applied to the fp32 accumulator before the only store:
- GELU: gelu_erf(acc + bias), the MLP's fc1;
- RESIDUAL: residual + gamma * (acc + bias), the attention proj and fc2 with LayerScale.
So the (M, N) GEMM output never makes the extra round trips through memory that separate bias,
GELU, scale and add kernels cost.

Each program owns a BLOCK_M x BLOCK_N output tile and walks K in BLOCK_K steps (`num_stages`
deep software pipeline); programs are ordered in groups of GROUP_M row blocks so that the A rows
of a group stay in L2 while every weight column block passes over them. Row and column indices are
wrapped (`% M`, `% N`) so the main loop's loads need no masks; only the store is masked, and K
tails are masked only when K is not a multiple of BLOCK_K.

Exposed as the PyTorch custom ops `sigma_fast::linear_gelu` and `sigma_fast::linear_residual`
with fake implementations, so `torch.compile(fullgraph=True)` traces them and CUDA graphs capture
them. CUDA tensors run the kernel; CPU tensors the references, unless TRITON_INTERPRET=1.
"""
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from sigma_fast.kernels import reference
from sigma_fast.kernels._dispatch import common_device, dot_config, interpreting, use_triton

EPILOGUE_GELU = 0
EPILOGUE_RESIDUAL = 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _gelu_erf(x):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt(2))), in fp32."""
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _linear_epilogue_kernel(
    a_ptr, w_ptr, bias_ptr, gamma_ptr, residual_ptr, out_ptr,
    M, N, K, stride_am, stride_wn, stride_rm, stride_om,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr, EVEN_K: tl.constexpr,
    SPLIT_EPILOGUE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # a (M, K), w (N, K), residual and out (M, N); unit stride along K and N.
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * blocks_n
    first_block_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_block_m, GROUP_M)
    block_m = first_block_m + (pid % programs_per_group) % group_rows
    block_n = (pid % programs_per_group) // group_rows

    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    # Wrapped indices keep the loads in bounds without masks; the store drops the wrapped rows.
    a_ptrs = a_ptr + (rows % M).to(tl.int64)[:, None] * stride_am + ks[None, :]
    w_ptrs = w_ptr + (cols % N).to(tl.int64)[None, :] * stride_wn + ks[:, None]  # (BLOCK_K, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k_start in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_valid = ks < K - k_start
            a = tl.load(a_ptrs, mask=k_valid[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_valid[:, None], other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    if SPLIT_EPILOGUE:
        # Two (BLOCK_M, BLOCK_N / 2) halves, one after the other: half the epilogue's live registers.
        acc_lo, acc_hi = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        cols_lo = block_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(acc_lo, rows, cols_lo, bias_ptr, gamma_ptr, residual_ptr, out_ptr, M, N, stride_rm, stride_om,
                  EPILOGUE, HAS_BIAS, HAS_GAMMA)
        _epilogue(acc_hi, rows, cols_lo + BLOCK_N // 2, bias_ptr, gamma_ptr, residual_ptr, out_ptr, M, N,
                  stride_rm, stride_om, EPILOGUE, HAS_BIAS, HAS_GAMMA)
    else:
        _epilogue(acc, rows, cols, bias_ptr, gamma_ptr, residual_ptr, out_ptr, M, N, stride_rm, stride_om,
                  EPILOGUE, HAS_BIAS, HAS_GAMMA)


@triton.jit
def _epilogue(acc, rows, cols, bias_ptr, gamma_ptr, residual_ptr, out_ptr, M, N, stride_rm, stride_om,
              EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr):
    """Bias, then GELU or LayerScale + residual, on an fp32 output tile; stores it."""
    col_valid = cols < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_valid, other=0.0).to(tl.float32)[None, :]
    mask = (rows < M)[:, None] & col_valid[None, :]
    rows64 = rows.to(tl.int64)
    if EPILOGUE == 0:  # EPILOGUE_GELU
        acc = _gelu_erf(acc)
    else:
        if HAS_GAMMA:
            acc *= tl.load(gamma_ptr + cols, mask=col_valid, other=0.0).to(tl.float32)[None, :]
        residual = tl.load(residual_ptr + rows64[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0)
        acc += residual.to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


class GemmConfig(NamedTuple):
    """Tile shape and launch settings of one GEMM; split_epilogue runs the epilogue in two halves
    of the tile's columns (a 128 x 256 fp32 tile plus the epilogue's loads spill otherwise)."""
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    split_epilogue: bool


def gemm_config(n, k, dtype):
    """The GemmConfig for a GEMM with N output and K input features of this dtype."""
    fit = lambda size, most: min(most, max(16, triton.next_power_of_2(size)))  # noqa: E731
    if interpreting():
        # Small tiles, so that CI's ragged shapes span several blocks (masks, grouping), and the
        # split epilogue from N = 64 on, so that CI runs both epilogue paths.
        block_n = fit(n, 64)
        return GemmConfig(32, block_n, 32, 2, 4, 1, block_n == 64)
    if dtype == torch.float32:
        # Four-byte operands: half the K depth keeps three stages in shared memory.
        return GemmConfig(128, fit(n, 128), fit(k, 32), 8, 8, 3, False)
    # sm_90 (bench/compile_check.py): wgmma, no spills; 128 x 256 needs the split epilogue.
    block_n = fit(n, 256)
    return GemmConfig(128, block_n, fit(k, 64), 8, 8, 3, block_n == 256)


def _unit_last_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def launch_linear_epilogue(a, weight, bias, gamma, residual, epilogue, config=None):
    """Runs the kernel: (..., K) x (N, K) -> (..., N), in residual's dtype if given, else a's.

    `config` (a GemmConfig) overrides `gemm_config`'s choice: benchmarks compare tilings with it.
    """
    out_features, in_features = weight.shape
    rows_a = _unit_last_stride(a.reshape(-1, in_features))
    weight = _unit_last_stride(weight)
    rows = rows_a.shape[0]
    out_dtype = residual.dtype if residual is not None else a.dtype
    out = torch.empty(rows, out_features, device=a.device, dtype=out_dtype)
    if rows and out_features:
        residual_rows = _unit_last_stride(residual.reshape(-1, out_features)) if residual is not None else out
        config = config or gemm_config(out_features, in_features, a.dtype)
        dot_dtype, dot_precision = dot_config(a.dtype)
        grid = (triton.cdiv(rows, config.block_m) * triton.cdiv(out_features, config.block_n),)
        _linear_epilogue_kernel[grid](
            rows_a, weight,
            bias.contiguous() if bias is not None else out,
            gamma.contiguous() if gamma is not None else out,
            residual_rows, out, rows, out_features, in_features,
            rows_a.stride(0), weight.stride(0), residual_rows.stride(0), out.stride(0),
            EPILOGUE=epilogue, HAS_BIAS=bias is not None, HAS_GAMMA=gamma is not None,
            EVEN_K=in_features % config.block_k == 0, SPLIT_EPILOGUE=config.split_epilogue,
            DOT_DTYPE=dot_dtype, DOT_PRECISION=dot_precision, BLOCK_M=config.block_m,
            BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
    return out.reshape(*a.shape[:-1], out_features)


def check_inputs(op_name, a, weight, bias, gamma=None, residual=None):
    """One-line ValueError / TypeError for inputs outside the ops' contract."""
    common_device(op_name, a, weight, bias, gamma, residual)
    if a.dim() < 1 or weight.dim() != 2 or weight.shape[1] != a.shape[-1]:
        raise ValueError(f"{op_name}: expected a (..., K) and weight (N, K), got {tuple(a.shape)} and "
                         f"{tuple(weight.shape)}")
    if a.dtype not in FLOAT_DTYPES or weight.dtype != a.dtype:
        raise TypeError(f"{op_name}: a and weight must share one of float32, float16, bfloat16, got "
                        f"{a.dtype} and {weight.dtype}")
    out_features = weight.shape[0]
    for name, vector in (("bias", bias), ("gamma", gamma)):
        if vector is not None and vector.shape != (out_features,):
            raise ValueError(f"{op_name}: {name} must be ({out_features},), got {tuple(vector.shape)}")
    out_shape = (*a.shape[:-1], out_features)
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"{op_name}: residual must be {out_shape}, got {tuple(residual.shape)}")
    for name, tensor in (("bias", bias), ("gamma", gamma), ("residual", residual)):
        if tensor is not None and tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op_name}: {name} must be float32, float16 or bfloat16, got {tensor.dtype}")


@torch.library.custom_op("sigma_fast::linear_gelu", mutates_args=())
def linear_gelu(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """gelu_erf(a @ weight.T + bias): a (..., K), weight (N, K), bias (N,) or None -> (..., N) in a's dtype."""
    check_inputs("linear_gelu", a, weight, bias)
    if use_triton(a.device):
        return launch_linear_epilogue(a, weight, bias, None, None, EPILOGUE_GELU)
    return reference.linear_gelu(a, weight, bias)


@linear_gelu.register_fake
def _linear_gelu_fake(a, weight, bias):
    check_inputs("linear_gelu", a, weight, bias)
    return a.new_empty((*a.shape[:-1], weight.shape[0]))


@torch.library.custom_op("sigma_fast::linear_residual", mutates_args=())
def linear_residual(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    gamma: Optional[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
    """residual + gamma * (a @ weight.T + bias): a (..., K), weight (N, K), bias and gamma (N,) or
    None, residual (..., N) -> (..., N) in residual's dtype."""
    check_inputs("linear_residual", a, weight, bias, gamma, residual)
    if use_triton(a.device):
        return launch_linear_epilogue(a, weight, bias, gamma, residual, EPILOGUE_RESIDUAL)
    return reference.linear_residual(a, weight, bias, gamma, residual)


@linear_residual.register_fake
def _linear_residual_fake(a, weight, bias, gamma, residual):
    check_inputs("linear_residual", a, weight, bias, gamma, residual)
    return residual.new_empty(residual.shape)
