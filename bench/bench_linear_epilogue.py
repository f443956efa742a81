"""The fused-epilogue GEMMs (`kernels.linear_gelu`, `kernels.linear_residual`) against cuBLAS, in
one run, at DINOv2-B's shapes: M = images x 1370 tokens (64 images = 32 pairs, and 32 images),
bf16, weights in nn.Linear's (N, K) layout:
- fc1: K=768 -> N=3072, bias + exact GELU;
- fc2: K=3072 -> N=768 and proj: K=768 -> N=768, bias + LayerScale + residual.

Rows per shape (file order, so each baseline is measured before the rows compared with it):
- `cublas_unfused` (the baseline): `F.linear` then the epilogue in PyTorch (`F.gelu`, `x + g * y`);
- `cublas_gemm_only`: `F.linear` alone, the GEMM's own ceiling;
- `addmm_gelu_tanh` (fc1 only): cuBLASLt's fused bias + GELU epilogue via
  `torch._addmm_activation(..., use_gelu=True)`; its GELU is the tanh approximation, not erf;
- `triton_fused`: our kernel with its default tiling;
- `triton_config` (64 images): other tilings, to pick the default on the card.

extra_info: `pairs`, `baseline`, `floor_s` (max(FLOPs / 787e12, bytes / 4.19e12), PERF.md's H200
ceilings), and from CUDA events: `median_ms`, `pairs_per_s`, `share_of_floor`, `ratio_to_<baseline>`.
Run on a GPU with `pytest bench/bench_linear_epilogue.py --benchmark-only`; skips without CUDA.
"""

import pytest
import torch
import torch.nn.functional as F

from sigma_fast import kernels
from timing import median_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy (read + write)
PEAK_FLOPS = 787e12  # FLOP/s, dense bf16 matmul
ROUNDS, WARMUP_ROUNDS = 20, 3
TOKENS, WIDTH, HIDDEN = 1370, 768, 3072
HALF = 2  # bytes per bf16 element
SHAPES = {"fc1": (WIDTH, HIDDEN, "gelu"), "fc2": (HIDDEN, WIDTH, "residual"), "proj": (WIDTH, WIDTH, "residual")}
IMAGES = (64, 32)
CASES = [pytest.param(shape, images, id=f"{shape}-{images}") for shape in SHAPES for images in IMAGES]
# Seconds per call (CUDA events) of the rows measured so far in this process, by benchmark name.
MEDIANS = {}


def floor_seconds(shape, images):
    in_features, out_features, epilogue = SHAPES[shape]
    rows = images * TOKENS
    elements = rows * in_features + out_features * in_features + rows * out_features
    if epilogue == "residual":
        elements += rows * out_features
    return max(elements * HALF / COPY_BANDWIDTH, 2 * rows * in_features * out_features / PEAK_FLOPS)


def measure(benchmark, request, fn, shape, images, baseline):
    """Times fn() with CUDA events in pytest-benchmark's rounds; records the row's extra_info."""
    median = median_seconds(benchmark, fn, ROUNDS, WARMUP_ROUNDS)
    MEDIANS[request.node.name] = median
    floor_s, pairs = floor_seconds(shape, images), images // 2
    benchmark.extra_info.update(pairs=pairs, baseline=baseline, floor_s=floor_s, median_ms=median * 1e3,
                                pairs_per_s=pairs / median, share_of_floor=floor_s / median)
    if baseline in MEDIANS:
        benchmark.extra_info[f"ratio_to_{baseline}"] = MEDIANS[baseline] / median


def baseline_name(shape, images):
    return f"test_linear_cublas_unfused[{shape}-{images}]"


def make_inputs(shape, images):
    """Random bf16 a, weight, bias, LayerScale gamma and residual of one layer (no zeros: they time faster)."""
    in_features, out_features, _ = SHAPES[shape]
    rows = images * TOKENS
    generator = torch.Generator(device="cuda").manual_seed(images + in_features)

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=generator, device="cuda", dtype=torch.bfloat16) * scale

    return {"a": randn(rows, in_features), "weight": randn(out_features, in_features, scale=in_features ** -0.5),
            "bias": randn(out_features), "gamma": randn(out_features, scale=0.1),
            "residual": randn(rows, out_features)}


def unfused(shape, t):
    y = F.linear(t["a"], t["weight"], t["bias"])
    if SHAPES[shape][2] == "gelu":
        return F.gelu(y)
    return t["residual"] + t["gamma"] * y


def fused(shape, t):
    if SHAPES[shape][2] == "gelu":
        return kernels.linear_gelu(t["a"], t["weight"], t["bias"])
    return kernels.linear_residual(t["a"], t["weight"], t["bias"], t["gamma"], t["residual"])


@pytest.mark.parametrize("shape,images", CASES)
def test_linear_cublas_unfused(benchmark, request, shape, images):
    t = make_inputs(shape, images)
    measure(benchmark, request, lambda: unfused(shape, t), shape, images, baseline_name(shape, images))


@pytest.mark.parametrize("shape,images", CASES)
def test_linear_cublas_gemm_only(benchmark, request, shape, images):
    t = make_inputs(shape, images)
    measure(benchmark, request, lambda: F.linear(t["a"], t["weight"], t["bias"]), shape, images,
            baseline_name(shape, images))


@pytest.mark.parametrize("images", IMAGES, ids=[f"fc1-{images}" for images in IMAGES])
def test_linear_addmm_gelu_tanh(benchmark, request, images):
    t = make_inputs("fc1", images)
    measure(benchmark, request,
            lambda: torch._addmm_activation(t["bias"], t["a"], t["weight"].t(), use_gelu=True),
            "fc1", images, baseline_name("fc1", images))


@pytest.mark.parametrize("shape,images", CASES)
def test_linear_triton_fused(benchmark, request, shape, images):
    t = make_inputs(shape, images)
    expected = unfused(shape, t).float()
    # A wrong kernel must not get a time: within bf16 rounding of cuBLAS + the PyTorch epilogue.
    error = (fused(shape, t).float() - expected).norm() / expected.norm()
    assert error < 1e-2, f"{shape}: relative error {error:.2e} against cuBLAS"
    measure(benchmark, request, lambda: fused(shape, t), shape, images, baseline_name(shape, images))


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, split_epilogue); none spills on sm_90.
TILINGS = [(128, 256, 64, 8, 8, 4, True), (128, 128, 64, 8, 8, 3, False), (128, 128, 64, 8, 8, 4, False),
           (128, 256, 64, 16, 8, 3, True)]


@pytest.mark.parametrize("tiling", TILINGS, ids=lambda c: "x".join(map(str, c[:3])) + f"-g{c[3]}-s{c[5]}")
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_triton_config(benchmark, request, shape, tiling):
    from sigma_fast.kernels.linear_epilogue import EPILOGUE_GELU, EPILOGUE_RESIDUAL, GemmConfig, launch_linear_epilogue

    images, t = IMAGES[0], make_inputs(shape, IMAGES[0])
    config = GemmConfig(*tiling)
    if SHAPES[shape][2] == "gelu":
        args = (t["a"], t["weight"], t["bias"], None, None, EPILOGUE_GELU)
    else:
        args = (t["a"], t["weight"], t["bias"], t["gamma"], t["residual"], EPILOGUE_RESIDUAL)
    measure(benchmark, request, lambda: launch_linear_epilogue(*args, config=config), shape, images,
            baseline_name(shape, images))
