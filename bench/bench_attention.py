"""The backbone's self-attention backends side by side at its production shape (issue 11, part 1).

DINOv2-B at 518 (`bench/shapes.py`): 1370 tokens, 12 heads of 64, bf16, 64 and 128 images (32 and
64 pairs), the fused qkv projection's layout (B, T, 3, H, d) as `sigma_fast.model.attention`
receives it. Floor: 4 * images * T^2 * H * d FLOPs / 787e12 (0.47 ms at 32 pairs). Rows: every
backend `attention.backends()` offers on the card (SDPA flash / cuDNN / memory-efficient, xformers
when installed); `extra_info` has `pairs`, `median_ms`, `share_of_floor` (FLOPs / 787e12 over the
median) and `ratio_to_sdpa_flash`, and `chosen` names the backend `choose_backend` picks, so the
table shows whether the measured choice is the fastest row. A backend that does not support the
shape is skipped with its error. Timing (`timing.per_call_seconds`): a CUDA graph of 5
back-to-back calls replayed between CUDA events (back-to-back launches where a backend cannot be
captured; `timing` in extra_info says which).
Run on a GPU: `pytest bench/bench_attention.py --benchmark-only`; everything skips without CUDA.
"""
import pytest
import torch

import shapes
from sigma_fast.model import attention
from timing import per_call_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

TOKENS, HEADS, HEAD_DIM = shapes.SEQUENCE, shapes.BACKBONE_HEADS, shapes.BACKBONE_HEAD_DIM
PEAK_FLOPS = 787e12  # FLOP/s, dense bf16 matmul (PERF.md, H200)
MEDIANS = {}
BACKENDS = attention.backends("cuda") if torch.cuda.is_available() else []


@pytest.mark.parametrize("pairs", shapes.ANNOTATION_PAIRS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention(benchmark, backend, pairs):
    generator = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(2 * pairs, TOKENS, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16,
                      generator=generator)
    with torch.inference_mode():
        try:
            attention.attention(qkv, backend)
        except (RuntimeError, ValueError, NotImplementedError) as error:
            pytest.skip(f"{backend} does not run this shape: {str(error).splitlines()[0]}")
        chosen = attention.choose_backend(qkv)

    def fn():
        with torch.inference_mode():
            return attention.attention(qkv, backend)

    median, method = per_call_seconds(benchmark, fn, calls=5)
    MEDIANS[(backend, pairs)] = median
    flops = 4 * (2 * pairs) * TOKENS ** 2 * HEADS * HEAD_DIM
    info = dict(pairs=pairs, median_ms=median * 1e3, share_of_floor=flops / PEAK_FLOPS / median,
                card=torch.cuda.get_device_name(), chosen=chosen, timing=method)
    if ("sdpa_flash", pairs) in MEDIANS:
        info["ratio_to_sdpa_flash"] = MEDIANS[("sdpa_flash", pairs)] / median
    benchmark.extra_info.update(info)
