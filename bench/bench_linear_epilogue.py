"""The fused-epilogue GEMMs (`kernels.linear_gelu`, `kernels.linear_residual`) against cuBLAS, in
one run, at the backbone's production shapes (`bench/shapes.py`): M = 2 * pairs * 1370 rows at 32
and 64 pairs, bf16, weights in nn.Linear's (N, K) layout:
- fc1: K=768 -> N=3072, bias + exact GELU;
- fc2: K=3072 -> N=768 and proj: K=768 -> N=768, bias + LayerScale + residual.

Rows per shape (file order, so each baseline is measured before the rows compared with it):
- `cublas_unfused` (the baseline): `F.linear` then the epilogue in PyTorch (`F.gelu`, `x + g * y`);
- `cublas_gemm_only`: `F.linear` alone, the GEMM's own ceiling;
- `addmm_gelu_tanh` (fc1 only): cuBLASLt's fused bias + GELU epilogue via
  `torch._addmm_activation(..., use_gelu=True)`; its GELU is the tanh approximation, not erf;
- `triton_fused`: our kernel with its default tiling;
- `triton_config` (32 pairs): other tilings, to pick the default on the card.

Floor: max(2*M*K*N FLOPs / 787e12, bytes / 4.19e12), PERF.md's H200 ceilings; compute-bound:
fc1 at 32 pairs is 0.526 ms. Timing (`timing.per_call_seconds`): a CUDA graph of 20 back-to-back
calls replayed between CUDA events. extra_info: `pairs`, `baseline`, `floor_s`, `median_ms`,
`pairs_per_s`, `share_of_floor`, `ratio_to_<baseline>` (same run), `timing`.
Run on a GPU with `pytest bench/bench_linear_epilogue.py --benchmark-only`; skips without CUDA.
"""

import pytest
import torch
import torch.nn.functional as F

import shapes
from sigma_fast import kernels
from timing import per_call_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy (read + write)
PEAK_FLOPS = 787e12  # FLOP/s, dense bf16 matmul
HALF = 2  # bytes per bf16 element
EPILOGUES = {"fc1": "gelu", "fc2": "residual", "proj": "residual"}
SHAPES = {name: (*shapes.LINEAR_SHAPES[name], epilogue) for name, epilogue in EPILOGUES.items()}
PAIRS = shapes.ANNOTATION_PAIRS
CASES = [pytest.param(shape, pairs, id=f"{shape}-{pairs}") for shape in SHAPES for pairs in PAIRS]
# Seconds per call (CUDA events) of the rows measured so far in this process, by benchmark name.
MEDIANS = {}


def floor_seconds(shape, pairs):
    in_features, out_features, epilogue = SHAPES[shape]
    rows = shapes.backbone_rows(pairs)
    elements = rows * in_features + out_features * in_features + rows * out_features
    if epilogue == "residual":
        elements += rows * out_features
    return max(elements * HALF / COPY_BANDWIDTH, 2 * rows * in_features * out_features / PEAK_FLOPS)


def measure(benchmark, request, fn, shape, pairs, baseline):
    """Times fn() (graph replays, CUDA events); records the row's extra_info."""
    median, method = per_call_seconds(benchmark, lambda: inference(fn))
    MEDIANS[request.node.name] = median
    floor_s = floor_seconds(shape, pairs)
    benchmark.extra_info.update(pairs=pairs, baseline=baseline, floor_s=floor_s, median_ms=median * 1e3,
                                pairs_per_s=pairs / median, share_of_floor=floor_s / median, timing=method)
    if baseline in MEDIANS:
        benchmark.extra_info[f"ratio_to_{baseline}"] = MEDIANS[baseline] / median


def inference(fn):
    with torch.inference_mode():
        return fn()


def baseline_name(shape, pairs):
    return f"test_linear_cublas_unfused[{shape}-{pairs}]"


def make_inputs(shape, pairs):
    """Random bf16 a, weight, bias, LayerScale gamma and residual of one layer (no zeros: they time
    faster), as `shapes.linear_inputs` lays them out."""
    generator = torch.Generator(device="cuda").manual_seed(pairs + SHAPES[shape][0])
    # linear_residual's arguments: fc1's rows use a, weight and bias of them.
    args = shapes.linear_inputs("linear_residual", shape, pairs, torch.device("cuda"), generator)
    return dict(zip(("a", "weight", "bias", "gamma", "residual"), args))


def unfused(shape, t):
    y = F.linear(t["a"], t["weight"], t["bias"])
    if SHAPES[shape][2] == "gelu":
        return F.gelu(y)
    return t["residual"] + t["gamma"] * y


def fused(shape, t):
    if SHAPES[shape][2] == "gelu":
        return kernels.linear_gelu(t["a"], t["weight"], t["bias"])
    return kernels.linear_residual(t["a"], t["weight"], t["bias"], t["gamma"], t["residual"])


@pytest.mark.parametrize("shape,pairs", CASES)
def test_linear_cublas_unfused(benchmark, request, shape, pairs):
    t = make_inputs(shape, pairs)
    measure(benchmark, request, lambda: unfused(shape, t), shape, pairs, baseline_name(shape, pairs))


@pytest.mark.parametrize("shape,pairs", CASES)
def test_linear_cublas_gemm_only(benchmark, request, shape, pairs):
    t = make_inputs(shape, pairs)
    measure(benchmark, request, lambda: F.linear(t["a"], t["weight"], t["bias"]), shape, pairs,
            baseline_name(shape, pairs))


@pytest.mark.parametrize("pairs", PAIRS, ids=[f"fc1-{pairs}" for pairs in PAIRS])
def test_linear_addmm_gelu_tanh(benchmark, request, pairs):
    t = make_inputs("fc1", pairs)
    measure(benchmark, request,
            lambda: torch._addmm_activation(t["bias"], t["a"], t["weight"].t(), use_gelu=True),
            "fc1", pairs, baseline_name("fc1", pairs))


@pytest.mark.parametrize("shape,pairs", CASES)
def test_linear_triton_fused(benchmark, request, shape, pairs):
    t = make_inputs(shape, pairs)
    expected = unfused(shape, t).float()
    # A wrong kernel must not get a time: within bf16 rounding of cuBLAS + the PyTorch epilogue.
    error = (fused(shape, t).float() - expected).norm() / expected.norm()
    assert error < 1e-2, f"{shape}: relative error {error:.2e} against cuBLAS"
    measure(benchmark, request, lambda: fused(shape, t), shape, pairs, baseline_name(shape, pairs))


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, split_epilogue); none spills on sm_90.
TILINGS = [(128, 256, 64, 8, 8, 4, True), (128, 128, 64, 8, 8, 3, False), (128, 128, 64, 8, 8, 4, False),
           (128, 256, 64, 16, 8, 3, True)]


@pytest.mark.parametrize("tiling", TILINGS, ids=lambda c: "x".join(map(str, c[:3])) + f"-g{c[3]}-s{c[5]}")
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_triton_config(benchmark, request, shape, tiling):
    from sigma_fast.kernels.linear_epilogue import EPILOGUE_GELU, EPILOGUE_RESIDUAL, GemmConfig, launch_linear_epilogue

    pairs, t = PAIRS[0], make_inputs(shape, PAIRS[0])
    config = GemmConfig(*tiling)
    if SHAPES[shape][2] == "gelu":
        args = (t["a"], t["weight"], t["bias"], None, None, EPILOGUE_GELU)
    else:
        args = (t["a"], t["weight"], t["bias"], t["gamma"], t["residual"], EPILOGUE_RESIDUAL)
    measure(benchmark, request, lambda: launch_linear_epilogue(*args, config=config), shape, pairs,
            baseline_name(shape, pairs))
