"""The head's fused Triton ops against their PyTorch references, in one run, at production shapes
(`bench/shapes.py`: N = 1369 tokens, C = 768, L = 3 taps, D = 256, H = 8 heads of d = 32,
T = 96 text tokens; bf16 taps and activations).

Rows, each op's reference first (file order), so that every fused row reports its ratio to it:
- `feature_diff` annotate, 32 and 64 pairs: folded bf16 projection (W', b'), no statistics.
  Floor: max(taps read 2*L*B*N*C*2 B + W' + out B*N*D*2 B over 4.19 TB/s,
  2*B*N*L*(2C+1)*D FLOPs over 787 TFLOP/s); compute-bound: 0.131 ms at 32 pairs.
- `feature_diff` train_stage2, 32 pairs, forward + backward: fp32 master projection, fp32 noise
  statistics, gradients of weight and bias. Floor: twice the forward's FLOPs (d^T grad_out is the
  same size), bytes: taps read twice, grad_out read once more.
- `bi_attention` annotate, 32 and 64 pairs: bf16, log-prior bias, padded text. Floor: q_v, v_v
  read and o_v written (3*B*H*N*d*2 B; the text side is small) over 4.19 TB/s, against
  3 matmuls of 2*B*H*N*T*d FLOPs; memory-bound: 0.017 ms at 32 pairs. Extra baseline: two
  `scaled_dot_product_attention` calls, one per direction (`ratio_to_sdpa`).
- `bi_attention` train, 32 pairs, forward + backward (grads of q_v, k_t, v_v, v_t): the backward
  reads q_v, v_v, grad o_v and writes dq_v, dv_v (8 visual passes in all) and runs 7 more matmuls.
- `feature_diff_stats` calibration, 32 pairs: reads the taps once (memory floor).

Timing (`timing.per_call_seconds`): a CUDA graph of 20 back-to-back calls replayed between CUDA
events, so that no Python, input check or synchronisation sits in the timed region. extra_info:
`pairs`, `median_ms` (per call), `pairs_per_s`, `floor_s`, `share_of_floor` (floor / median),
`ratio_to_reference` (reference median / this median, same run), `timing` (graph or launches).
Run on a GPU: `pytest bench/bench_kernels.py --benchmark-only`; everything skips without CUDA.
"""
import pytest
import torch
import torch.nn.functional as F

import shapes
from sigma_fast import kernels
from sigma_fast.kernels import reference
from timing import per_call_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy (read + write), H200 (PERF.md)
PEAK_FLOPS = 787e12  # FLOP/s, dense bf16 matmul, H200 (PERF.md)
HALF, FLOAT = 2, 4  # bytes per bf16 / fp32 element
MEDIANS = {}  # (op, mode, pairs, implementation) -> seconds per call, rows measured so far


def floor_seconds(bytes_moved, flops):
    return max(bytes_moved / COPY_BANDWIDTH, flops / PEAK_FLOPS)


def feature_diff_floor(pairs, train):
    rows = pairs * shapes.TOKENS
    taps = 2 * shapes.NUM_TAPS * rows * shapes.CHANNELS * HALF
    weight = shapes.NUM_TAPS * shapes.FEATURES * shapes.DIM * (FLOAT if train else HALF)
    flops = 2 * rows * shapes.NUM_TAPS * shapes.FEATURES * shapes.DIM
    if train:  # backward: taps again, grad_out, the fp32 weight gradient
        return floor_seconds(2 * taps + 2 * weight + 2 * rows * shapes.DIM * HALF, 2 * flops)
    return floor_seconds(taps + weight + rows * shapes.DIM * HALF, flops)


def stats_floor(pairs):
    return 2 * shapes.NUM_TAPS * pairs * shapes.TOKENS * shapes.CHANNELS * HALF / COPY_BANDWIDTH


def bi_attention_floor(pairs, train):
    visual = pairs * shapes.HEADS * shapes.TOKENS * shapes.HEAD_DIM * HALF
    text = pairs * shapes.HEADS * shapes.TEXT_TOKENS * shapes.HEAD_DIM * HALF
    matmul = 2 * pairs * shapes.HEADS * shapes.TOKENS * shapes.TEXT_TOKENS * shapes.HEAD_DIM
    prior = pairs * shapes.TOKENS * (FLOAT if train else HALF)
    if train:
        return floor_seconds(8 * visual + 9 * text + 2 * prior, 10 * matmul)
    return floor_seconds(3 * visual + 3 * text + prior, 3 * matmul)


def measure(benchmark, key, fn, floor_s, baselines=("reference",)):
    """Times fn, records the row's extra_info (see the module docstring)."""
    op, mode, pairs, _ = key
    median, method = per_call_seconds(benchmark, fn)
    MEDIANS[key] = median
    info = dict(op=op, mode=mode, pairs=pairs, card=torch.cuda.get_device_name(), median_ms=median * 1e3,
                pairs_per_s=pairs / median, floor_s=floor_s, share_of_floor=floor_s / median, timing=method)
    for baseline in baselines:
        if key[3] != baseline and (op, mode, pairs, baseline) in MEDIANS:
            info[f"ratio_to_{baseline}"] = MEDIANS[(op, mode, pairs, baseline)] / median
    benchmark.extra_info.update(info)


def cuda_inputs(op, mode, pairs, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    args, kwargs = shapes.inputs(shapes.Variant(op, mode, pairs, False), torch.device("cuda"), generator)
    return args, kwargs, generator


def cases(modes_pairs, implementations):
    return [pytest.param(mode, pairs, impl, id=f"{mode}-{pairs}-{impl}")
            for mode, pairs in modes_pairs for impl in implementations]


FEATURE_DIFF = {"fused": kernels.feature_diff, "reference": reference.feature_diff}
FEATURE_DIFF_CASES = ([("annotate", pairs) for pairs in shapes.ANNOTATION_PAIRS]
                      + [("train_stage2", shapes.TRAINING_PAIRS)])


@pytest.mark.parametrize("mode,pairs,impl", cases(FEATURE_DIFF_CASES, ("reference", "fused")))
def test_feature_diff(benchmark, mode, pairs, impl):
    (f_orig, f_edit), params, generator = cuda_inputs("feature_diff", mode, pairs)
    op, train = FEATURE_DIFF[impl], mode.startswith("train")
    if train:
        leaves = [params["weight"], params["bias"]]
        grad_out = torch.randn(pairs, shapes.TOKENS, shapes.DIM, generator=generator, device="cuda",
                               dtype=shapes.TRAINING_DTYPE)

        def fn():
            return torch.autograd.grad(op(f_orig, f_edit, **params), leaves, grad_out)
    else:
        def fn():
            with torch.no_grad():
                return op(f_orig, f_edit, **params)
    measure(benchmark, ("feature_diff", mode, pairs, impl), fn, feature_diff_floor(pairs, train))


@pytest.mark.parametrize("impl", ("reference", "fused"))
def test_feature_diff_stats(benchmark, impl):
    pairs = shapes.TRAINING_PAIRS
    (f_orig, f_edit), _, _ = cuda_inputs("feature_diff_stats", "calibration", pairs)
    op = kernels.feature_diff_stats if impl == "fused" else reference.feature_diff_stats
    measure(benchmark, ("feature_diff_stats", "calibration", pairs, impl), lambda: op(f_orig, f_edit),
            stats_floor(pairs))


def sdpa_bi_attention(q_v, k_t, v_v, v_t, prior_bias, text_mask):
    """The two directions as two fused-attention calls, each computing the logits itself."""
    o_v = F.scaled_dot_product_attention(q_v, k_t, v_t, attn_mask=text_mask[:, None, None, :])
    o_t = F.scaled_dot_product_attention(k_t, q_v, v_v, attn_mask=prior_bias.to(q_v.dtype)[:, None, None, :])
    return o_v, o_t * text_mask[:, None, :, None]


BI_ATTENTION = {"fused": kernels.bi_attention, "reference": reference.bi_attention, "sdpa": sdpa_bi_attention}
BI_ATTENTION_CASES = [("annotate", pairs) for pairs in shapes.ANNOTATION_PAIRS] + [("train", shapes.TRAINING_PAIRS)]


@pytest.mark.parametrize("mode,pairs,impl", cases(BI_ATTENTION_CASES, ("reference", "sdpa", "fused")))
def test_bi_attention(benchmark, mode, pairs, impl):
    _, inputs, generator = cuda_inputs("bi_attention", mode, pairs, seed=1)
    op, train = BI_ATTENTION[impl], mode == "train"
    if train:
        leaves = [inputs[name] for name in ("q_v", "k_t", "v_v", "v_t")]
        grads_out = [torch.randn(t.shape, generator=generator, device="cuda", dtype=t.dtype) for t in leaves[:2]]

        def fn():
            return torch.autograd.grad(op(**inputs), leaves, grads_out)
    else:
        def fn():
            with torch.no_grad():
                return op(**inputs)
    measure(benchmark, ("bi_attention", mode, pairs, impl), fn, bi_attention_floor(pairs, train),
            baselines=("reference", "sdpa"))
