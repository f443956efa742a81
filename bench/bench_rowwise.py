"""The row-wise fused kernels of our DINOv2 forward against their unfused PyTorch equivalents, in
one run, at the backbone's production shape: M = 64 images x 1370 tokens (32 pairs), bf16.

Operations, each with an `unfused` row (the baseline, written as the unfused model computes it)
measured before its `fused` row:
- `residual_layer_norm`: x + gamma * y, then `F.layer_norm` (C = 768);
- `layer_norm`: `F.layer_norm` alone (the block's first LayerNorm, no residual);
- `residual_layer_norm_fp8`: the block boundary, then per-row e4m3 quantisation of h;
- `quantize_fp8_gelu`: `F.gelu` of fc1's output (K = 3072), then per-row e4m3 quantisation;
- `quantize_fp8`: per-row e4m3 quantisation of a 768-wide activation.

extra_info: `pairs`, `baseline` (the benchmark compared with), `floor_s` (bytes the fused kernel
must move / 4.19e12 B/s, PERF.md's H200 copy bandwidth; one floor per operation), and from CUDA
events: `median_ms`, `share_of_floor` (floor_s / median), `ratio_to_<baseline>`.
Run on a GPU with `pytest bench/bench_rowwise.py --benchmark-only`; skips without CUDA.
"""

import pytest
import torch
import torch.nn.functional as F

from sigma_fast import kernels
from timing import median_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy (read + write)
ROUNDS, WARMUP_ROUNDS = 20, 3
PAIRS, TOKENS, WIDTH, HIDDEN = 32, 1370, 768, 3072
ROWS = 2 * PAIRS * TOKENS
EPS = 1e-6
E4M3_MAX = 448.0
HALF, BYTE, FLOAT = 2, 1, 4  # bytes per bf16, e4m3 and fp32 element
# Bytes each fused kernel must move (parameters are negligible).
FLOORS = {
    "residual_layer_norm": 4 * ROWS * WIDTH * HALF / COPY_BANDWIDTH,
    "layer_norm": 2 * ROWS * WIDTH * HALF / COPY_BANDWIDTH,
    "residual_layer_norm_fp8": (ROWS * WIDTH * (3 * HALF + BYTE) + ROWS * FLOAT) / COPY_BANDWIDTH,
    "quantize_fp8_gelu": (ROWS * HIDDEN * (HALF + BYTE) + ROWS * FLOAT) / COPY_BANDWIDTH,
    "quantize_fp8": (ROWS * WIDTH * (HALF + BYTE) + ROWS * FLOAT) / COPY_BANDWIDTH,
}
# Seconds per call (CUDA events) of the rows measured so far in this process, by benchmark name.
MEDIANS = {}


def measure(benchmark, request, fn, operation):
    """Times fn() with CUDA events in pytest-benchmark's rounds; records the row's extra_info."""
    median = median_seconds(benchmark, fn, ROUNDS, WARMUP_ROUNDS)
    MEDIANS[request.node.name] = median
    baseline = f"test_unfused[{operation}]"
    floor_s = FLOORS[operation]
    benchmark.extra_info.update(pairs=PAIRS, baseline=baseline, floor_s=floor_s, median_ms=median * 1e3,
                                share_of_floor=floor_s / median)
    if baseline in MEDIANS:
        benchmark.extra_info[f"ratio_to_{baseline}"] = MEDIANS[baseline] / median


@pytest.fixture(scope="module")
def inputs():
    """bf16 activations of one layer (no zeros: they time faster) and bf16 LayerNorm parameters."""
    generator = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, device="cuda").mul_(scale).to(torch.bfloat16)

    return {"x": randn(ROWS, WIDTH, scale=3.0), "y": randn(ROWS, WIDTH), "gamma": randn(WIDTH, scale=0.1),
            "weight": randn(WIDTH).add_(1.0), "bias": randn(WIDTH, scale=0.1), "hidden": randn(ROWS, HIDDEN)}


def unfused_quantize(values):
    """Per-row e4m3 quantisation as PyTorch ops: (values_fp8, scale (M, 1))."""
    absmax = values.abs().amax(-1, keepdim=True).float().clamp_min(1e-12)
    scaled = (values.float() * (E4M3_MAX / absmax)).clamp(-E4M3_MAX, E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn), absmax / E4M3_MAX


def unfused_boundary(x, y, gamma, weight, bias):
    x = x + gamma * y
    return x, F.layer_norm(x, (WIDTH,), weight, bias, EPS)


UNFUSED = {
    "residual_layer_norm": lambda t: unfused_boundary(t["x"], t["y"], t["gamma"], t["weight"], t["bias"]),
    "layer_norm": lambda t: F.layer_norm(t["x"], (WIDTH,), t["weight"], t["bias"], EPS),
    "residual_layer_norm_fp8": lambda t: unfused_quantize(
        unfused_boundary(t["x"], t["y"], t["gamma"], t["weight"], t["bias"])[1]),
    "quantize_fp8_gelu": lambda t: unfused_quantize(F.gelu(t["hidden"])),
    "quantize_fp8": lambda t: unfused_quantize(t["x"]),
}
FUSED = {
    "residual_layer_norm": lambda t: kernels.residual_layer_norm(
        t["x"], t["y"], t["gamma"], t["weight"], t["bias"], EPS),
    "layer_norm": lambda t: kernels.residual_layer_norm(t["x"], None, None, t["weight"], t["bias"], EPS),
    "residual_layer_norm_fp8": lambda t: kernels.residual_layer_norm_fp8(
        t["x"], t["y"], t["gamma"], t["weight"], t["bias"], EPS),
    "quantize_fp8_gelu": lambda t: kernels.quantize_fp8_rows(t["hidden"], apply_gelu=True),
    "quantize_fp8": lambda t: kernels.quantize_fp8_rows(t["x"]),
}


@pytest.mark.parametrize("operation", list(UNFUSED))
def test_unfused(benchmark, request, inputs, operation):
    measure(benchmark, request, lambda: UNFUSED[operation](inputs), operation)


@pytest.mark.parametrize("operation", list(FUSED))
def test_fused(benchmark, request, inputs, operation):
    measure(benchmark, request, lambda: FUSED[operation](inputs), operation)
