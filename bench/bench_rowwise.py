"""The row-wise fused kernels of our DINOv2 forward against their unfused PyTorch equivalents, in
one run, at the backbone's production shapes (`bench/shapes.py`): M = 2 * pairs * 1370 rows at
32 and 64 pairs, C = 768, bf16.

Operations (`shapes.VARIANTS`' row ops), each with an `unfused` row (the baseline, written as the
unfused model computes it) measured before its `fused` row:
- `residual_layer_norm-boundary`: x + gamma * y, then `F.layer_norm`; floor 4*M*C*2 bytes;
- `residual_layer_norm-first`: `F.layer_norm` alone (the first LayerNorm); floor 2*M*C*2 bytes;
- `residual_layer_norm_fp8-boundary` / `-first`: the same, h written as per-row e4m3 with an fp32
  scale; floor M*C*(3*2 + 1) (boundary) or M*C*(2 + 1) bytes plus 4*M;
- `quantize_fp8_rows-fc1_gelu`: `F.gelu` of fc1's output (K = 3072), then per-row e4m3;
  floor M*K*(2 + 1) + 4*M bytes;
- `quantize_fp8_rows-attention_out`: per-row e4m3 of a 768-wide activation.
Floors are those bytes over 4.19e12 B/s (PERF.md's H200 copy bandwidth): 0.129 ms for the
boundary at 32 pairs.

Timing (`timing.per_call_seconds`): a CUDA graph of 20 back-to-back calls replayed between CUDA
events. extra_info: `pairs`, `median_ms`, `pairs_per_s`, `floor_s`, `share_of_floor`,
`ratio_to_unfused` (same run), `timing`.
Run on a GPU with `pytest bench/bench_rowwise.py --benchmark-only`; skips without CUDA.
"""

import pytest
import torch
import torch.nn.functional as F

import shapes
from sigma_fast import kernels
from timing import per_call_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy (read + write)
E4M3_MAX = 448.0
HALF, BYTE, FLOAT = 2, 1, 4  # bytes per bf16, e4m3 and fp32 element
ROW_OPS = ("residual_layer_norm", "residual_layer_norm_fp8", "quantize_fp8_rows")
VARIANTS = [v for v in shapes.VARIANTS if v.op in ROW_OPS]
MEDIANS = {}  # (op, mode, pairs, implementation) -> seconds per call


def floor_seconds(variant):
    rows = shapes.backbone_rows(variant.pairs)
    width = shapes.MLP_HIDDEN if variant.mode == "fc1_gelu" else shapes.CHANNELS
    reads = 2 if variant.mode == "boundary" else 1  # x and y, or x
    writes_x = 1 if variant.mode == "boundary" else 0  # x_out
    if variant.op == "residual_layer_norm":
        moved = rows * width * HALF * (reads + writes_x + 1)
    elif variant.op == "residual_layer_norm_fp8":
        moved = rows * width * (HALF * (reads + writes_x) + BYTE) + rows * FLOAT
    else:
        moved = rows * width * (HALF + BYTE) + rows * FLOAT
    return moved / COPY_BANDWIDTH


def unfused_quantize(values):
    """Per-row e4m3 quantisation as PyTorch ops: (values_fp8, scale (M, 1))."""
    absmax = values.abs().amax(-1, keepdim=True).float().clamp_min(1e-12)
    scaled = (values.float() * (E4M3_MAX / absmax)).clamp(-E4M3_MAX, E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn), absmax / E4M3_MAX


def unfused_layer_norm(x, y, gamma, weight, bias, eps):
    if y is not None:
        x = x + gamma * y
    return x, F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def unfused(op, args):
    if op == "quantize_fp8_rows":
        x, apply_gelu = args
        return unfused_quantize(F.gelu(x) if apply_gelu else x)
    x, h = unfused_layer_norm(*args)
    return (x, *unfused_quantize(h.flatten(0, 1))) if op == "residual_layer_norm_fp8" else (x, h)


@pytest.mark.parametrize("variant,impl", [pytest.param(v, impl, id=f"{v.op}-{v.mode}-{v.pairs}-{impl}")
                                          for v in VARIANTS for impl in ("unfused", "fused")])
def test_rowwise(benchmark, variant, impl):
    generator = torch.Generator(device="cuda").manual_seed(0)
    args, _ = shapes.inputs(variant, torch.device("cuda"), generator)
    op = getattr(kernels, variant.op)

    def fn():
        with torch.inference_mode():
            return op(*args) if impl == "fused" else unfused(variant.op, args)

    median, method = per_call_seconds(benchmark, fn)
    key = (variant.op, variant.mode, variant.pairs)
    MEDIANS[(*key, impl)] = median
    floor_s = floor_seconds(variant)
    benchmark.extra_info.update(op=variant.op, mode=variant.mode, pairs=variant.pairs, median_ms=median * 1e3,
                                pairs_per_s=variant.pairs / median, floor_s=floor_s,
                                share_of_floor=floor_s / median, timing=method)
    if impl == "fused" and (*key, "unfused") in MEDIANS:
        benchmark.extra_info["ratio_to_unfused"] = MEDIANS[(*key, "unfused")] / median
