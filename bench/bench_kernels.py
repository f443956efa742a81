"""Throughput of the fused Triton kernels against their baselines, in one run, at production shapes.

feature_diff: B=64 pairs, N=1369 tokens, C=768 channels, L=3 taps, D=256, bf16 taps and the
model's fp32 projection; baseline: the unfused PyTorch reference.
bi_attention: B=64, H=8 heads, N=1369, d=32, T=32 text tokens, bf16; baselines: the reference
and two `scaled_dot_product_attention` calls, one per direction (each computes the logits itself).

Each benchmark records `pairs`, `baseline` (the benchmark it is compared with) and `floor_s`: the
larger of bytes moved / 4.19e12 B/s and FLOPs / 787e12 FLOP/s (H200 measurements, PERF.md), for
the operation itself, so every row of one operation shares its floor. Run on a GPU with
`pytest bench/bench_kernels.py --benchmark-only`; everything skips without CUDA.
"""
import pytest
import torch
import torch.nn.functional as F

from sigma_fast import kernels
from sigma_fast.kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy (read + write)
PEAK_FLOPS = 787e12  # FLOP/s, dense bf16 matmul
ROUNDS, WARMUP_ROUNDS = 10, 2

PAIRS, TOKENS, CHANNELS, TAPS, DIM = 64, 1369, 768, 3, 256
HEADS, HEAD_DIM, TEXT_LEN = 8, 32, 32
HALF = 2  # bytes per bf16 element
DEVICE = "cuda"


def floor_seconds(bytes_moved, flops):
    return max(bytes_moved / COPY_BANDWIDTH, flops / PEAK_FLOPS)


def run(benchmark, fn, *, baseline, floor_s):
    """Times fn (synchronised, so the device work is inside the timing) and records the table's info."""
    def timed():
        result = fn()
        torch.cuda.synchronize()
        return result

    benchmark.extra_info.update(pairs=PAIRS, baseline=baseline, floor_s=floor_s)
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)


# feature_diff: read both images' taps once, write the output; the projection's matmul work.
FEATURES = 2 * CHANNELS + 1
FEATURE_DIFF_BYTES = (2 * TAPS * PAIRS * TOKENS * CHANNELS * HALF + TAPS * FEATURES * DIM * 4
                      + PAIRS * TOKENS * DIM * HALF)
FEATURE_DIFF_FLOPS = 2 * PAIRS * TOKENS * TAPS * FEATURES * DIM
FEATURE_DIFF_FLOOR = floor_seconds(FEATURE_DIFF_BYTES, FEATURE_DIFF_FLOPS)
# Training step: the backward reads the taps and the output gradient again and runs a second
# matmul of the same size (grad_weight = d^T grad_out).
FEATURE_DIFF_TRAIN_FLOOR = floor_seconds(
    2 * FEATURE_DIFF_BYTES + PAIRS * TOKENS * DIM * HALF, 2 * FEATURE_DIFF_FLOPS)


@pytest.fixture(scope="module")
def feature_diff_inputs():
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=DEVICE, dtype=dtype)

    f_orig = [randn(PAIRS, TOKENS, CHANNELS, dtype=torch.bfloat16) for _ in range(TAPS)]
    f_edit = [randn(PAIRS, TOKENS, CHANNELS, dtype=torch.bfloat16) for _ in range(TAPS)]
    params = {
        "weight": randn(TAPS, FEATURES, DIM) * (TAPS * FEATURES) ** -0.5,
        "bias": randn(DIM),
        "noise_mean": randn(TAPS, FEATURES) * 0.1,
        "noise_std": torch.rand(TAPS, FEATURES, generator=generator, device=DEVICE) + 0.5,
    }
    grad_out = randn(PAIRS, TOKENS, DIM, dtype=torch.bfloat16)
    return f_orig, f_edit, params, grad_out


def test_feature_diff_fused(benchmark, feature_diff_inputs):
    f_orig, f_edit, params, _ = feature_diff_inputs
    with torch.no_grad():
        run(benchmark, lambda: kernels.feature_diff(f_orig, f_edit, **params),
            baseline="test_feature_diff_reference", floor_s=FEATURE_DIFF_FLOOR)


def test_feature_diff_reference(benchmark, feature_diff_inputs):
    f_orig, f_edit, params, _ = feature_diff_inputs
    with torch.no_grad():
        run(benchmark, lambda: reference.feature_diff(f_orig, f_edit, **params),
            baseline="test_feature_diff_reference", floor_s=FEATURE_DIFF_FLOOR)


def _feature_diff_train_step(op, f_orig, f_edit, params, grad_out):
    weight = params["weight"].detach().requires_grad_()
    bias = params["bias"].detach().requires_grad_()
    out = op(f_orig, f_edit, weight, bias, params["noise_mean"], params["noise_std"])
    return torch.autograd.grad(out, (weight, bias), grad_out)


def test_feature_diff_fused_train(benchmark, feature_diff_inputs):
    run(benchmark, lambda: _feature_diff_train_step(kernels.feature_diff, *feature_diff_inputs),
        baseline="test_feature_diff_reference_train", floor_s=FEATURE_DIFF_TRAIN_FLOOR)


def test_feature_diff_reference_train(benchmark, feature_diff_inputs):
    run(benchmark, lambda: _feature_diff_train_step(reference.feature_diff, *feature_diff_inputs),
        baseline="test_feature_diff_reference_train", floor_s=FEATURE_DIFF_TRAIN_FLOOR)


# bi_attention: read q_v, v_v and the text tensors once, write o_v and o_t; three matmuls
# (A, softmax_T(A) v_t, softmax_N(A^T) v_v) of 2*N*T*d FLOPs each per head.
VISUAL_ELEMENTS = PAIRS * HEADS * TOKENS * HEAD_DIM
TEXT_ELEMENTS = PAIRS * HEADS * TEXT_LEN * HEAD_DIM
BI_ATTENTION_BYTES = (3 * VISUAL_ELEMENTS + 3 * TEXT_ELEMENTS) * HALF + PAIRS * TOKENS * HALF + PAIRS * TEXT_LEN
BI_ATTENTION_FLOPS = 3 * 2 * PAIRS * HEADS * TOKENS * TEXT_LEN * HEAD_DIM
BI_ATTENTION_FLOOR = floor_seconds(BI_ATTENTION_BYTES, BI_ATTENTION_FLOPS)
# Training step: the backward reads q_v, v_v and grad o_v again and writes dq_v and dv_v (the text
# side: four reads, two writes), and runs seven matmuls of the same size.
BI_ATTENTION_TRAIN_FLOOR = floor_seconds(
    BI_ATTENTION_BYTES + (5 * VISUAL_ELEMENTS + 6 * TEXT_ELEMENTS) * HALF, 10 / 3 * BI_ATTENTION_FLOPS)


@pytest.fixture(scope="module")
def bi_attention_inputs():
    generator = torch.Generator(device=DEVICE).manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)

    text_mask = torch.rand(PAIRS, TEXT_LEN, generator=generator, device=DEVICE) > 0.3
    text_mask[:, 0] = True
    prior = torch.rand(PAIRS, TOKENS, generator=generator, device=DEVICE)
    inputs = {
        "q_v": randn(PAIRS, HEADS, TOKENS, HEAD_DIM),
        "k_t": randn(PAIRS, HEADS, TEXT_LEN, HEAD_DIM),
        "v_v": randn(PAIRS, HEADS, TOKENS, HEAD_DIM),
        "v_t": randn(PAIRS, HEADS, TEXT_LEN, HEAD_DIM),
        "prior_bias": torch.log(prior.clamp_min(1e-4)).to(torch.bfloat16),
        "text_mask": text_mask,
    }
    grads_out = (randn(PAIRS, HEADS, TOKENS, HEAD_DIM), randn(PAIRS, HEADS, TEXT_LEN, HEAD_DIM))
    return inputs, grads_out


def sdpa_bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask):
    """The two directions as two fused-attention calls, each computing the logits itself."""
    o_v = F.scaled_dot_product_attention(q_v, k_t, v_t, attn_mask=text_mask[:, None, None, :])
    o_t = F.scaled_dot_product_attention(k_t, q_v, v_v, attn_mask=prior_bias[:, None, None, :])
    return o_v, o_t * text_mask[:, None, :, None]


def test_bi_attention_fused(benchmark, bi_attention_inputs):
    inputs, _ = bi_attention_inputs
    with torch.no_grad():
        run(benchmark, lambda: kernels.bi_attention(**inputs),
            baseline="test_bi_attention_reference", floor_s=BI_ATTENTION_FLOOR)


def test_bi_attention_reference(benchmark, bi_attention_inputs):
    inputs, _ = bi_attention_inputs
    with torch.no_grad():
        run(benchmark, lambda: reference.bi_attention(**inputs),
            baseline="test_bi_attention_reference", floor_s=BI_ATTENTION_FLOOR)


def test_bi_attention_sdpa(benchmark, bi_attention_inputs):
    inputs, _ = bi_attention_inputs
    with torch.no_grad():
        run(benchmark, lambda: sdpa_bi_attention(**inputs),
            baseline="test_bi_attention_reference", floor_s=BI_ATTENTION_FLOOR)


def _bi_attention_train_step(op, inputs, grads_out):
    leaves = {name: inputs[name].detach().requires_grad_() for name in ("q_v", "k_t", "v_v", "v_t")}
    outs = op(**{**inputs, **leaves})
    return torch.autograd.grad(outs, list(leaves.values()), grads_out)


def test_bi_attention_fused_train(benchmark, bi_attention_inputs):
    run(benchmark, lambda: _bi_attention_train_step(kernels.bi_attention, *bi_attention_inputs),
        baseline="test_bi_attention_reference_train", floor_s=BI_ATTENTION_TRAIN_FLOOR)


def test_bi_attention_reference_train(benchmark, bi_attention_inputs):
    run(benchmark, lambda: _bi_attention_train_step(reference.bi_attention, *bi_attention_inputs),
        baseline="test_bi_attention_reference_train", floor_s=BI_ATTENTION_TRAIN_FLOOR)


def test_bi_attention_sdpa_train(benchmark, bi_attention_inputs):
    run(benchmark, lambda: _bi_attention_train_step(sdpa_bi_attention, *bi_attention_inputs),
        baseline="test_bi_attention_reference_train", floor_s=BI_ATTENTION_TRAIN_FLOOR)
