"""Throughput of the SIGMA core against DINOv2 as users run it, all rows in one run (issue 11, part 7).

The core (PERF.md's target): DINOv2-Base at 518x518 (random weights, the compute of
`facebook/dinov2-base`), 11 layers with taps 2, 5, 11, the fused differencing, two refinement blocks
and the decoder, prior given, text tokens precomputed. Rows, in file order (baselines first, so that
each later row can report its ratio to them), each at 32 and 64 pairs (64 and 128 images):
- `hf_fp32_eager`: HF `Dinov2Model`, fp32, eager attention, 12 layers, `output_hidden_states=True`
  (what a new user writes; PERF.md's 61 pairs/s row);
- `hf_bf16_sdpa`: HF, bf16, SDPA, 11 layers (stops after the deepest tap; PERF.md's 628 row);
- `hf_bf16_compile`: the same under `torch.compile` (what an expert tries first);
- `core_bf16_eager`, `core_bf16_graph` (`GraphedForward`: the forward captured in a CUDA graph),
  `core_fp8_graph` (`backbone.quantize_fp8()`, then the same graph).
Each test builds its own model, so that no row runs a module another row moved to another dtype.

Timing: each round records CUDA events around one call and synchronises once; warm-up rounds
(which also compile and capture) are dropped. `extra_info` of every row: `pairs`, `card`,
`median_ms` (CUDA events), `pairs_per_s`, `share_of_floor` (pairs/s over PERF.md's 1,074 pairs/s
bound of GEMMs + attention, 11 layers, bf16) and `ratio_to_hf_fp32`, `ratio_to_hf_bf16`,
`ratio_to_hf_compile` for the baselines already measured in this run at the same pair count.
pytest-benchmark's own statistics are the wall times of the same rounds (one sync per round).

FP8 agreement: with random weights the head's masks mean nothing, so `core_fp8_graph` records the
backbone taps' relative error against bf16 on the same images (`fp8_tap_rel_error`, one per tap,
||fp8 - bf16|| / ||bf16||); mask IoU against bf16 belongs to a test on a trained checkpoint.

Run on a GPU: `pytest bench/bench_core.py --benchmark-only`; everything skips without CUDA.
"""
import contextlib
import statistics

import pytest
import torch
from timing import event_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

IMAGE_SIZE, TAPS = 518, (2, 5, 11)
PAIR_COUNTS = (32, 64)
ROUNDS, WARMUP_ROUNDS = 20, 3
FLOOR_PAIRS_PER_S = 1074  # PERF.md: GEMMs + attention alone, 11 layers, bf16, H200
BASELINES = {"hf_fp32": "hf_fp32_eager", "hf_bf16": "hf_bf16_sdpa", "hf_compile": "hf_bf16_compile"}
FP8_AGREEMENT_IMAGES = 8

# (row, pairs) -> median seconds per call (CUDA events) of the rows measured so far in this
# process; bench_train.py reads the core's figure from here.
MEDIANS = {}


def measure(benchmark, row, pairs, fn, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, grad=False):
    """Times `fn()` for `rounds` rounds after `warmup_rounds` (under inference mode unless `grad`),
    records the row's extra_info and its median in MEDIANS; returns the median in seconds."""
    times = []

    def timed():
        times.append(event_seconds(fn))

    with contextlib.nullcontext() if grad else torch.inference_mode():
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    median = statistics.median(times[warmup_rounds:])
    MEDIANS[(row, pairs)] = median
    record(benchmark.extra_info, row, pairs, median)
    return median


def record(info, row, pairs, median):
    """The figures every row reports (see the module docstring)."""
    pairs_per_s = pairs / median
    info.update(row=row, pairs=pairs, card=torch.cuda.get_device_name(), median_ms=median * 1e3,
                pairs_per_s=pairs_per_s, share_of_floor=pairs_per_s / FLOOR_PAIRS_PER_S)
    for name, baseline in BASELINES.items():
        if baseline != row and (baseline, pairs) in MEDIANS:
            info[f"ratio_to_{name}"] = MEDIANS[(baseline, pairs)] / median
    if row.startswith("core"):
        from sigma_fast.model import autotune

        info["autotune"] = autotune.recorded_choices()  # the attention and epilogue paths measured


def build_dinov2(layers, dtype=torch.float32, attention="sdpa"):
    """A random DINOv2-Base (ViT-B/14 at 518) with `layers` layers, on the GPU."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Dinov2Model(Dinov2Config(image_size=IMAGE_SIZE, num_hidden_layers=layers))
    model.set_attn_implementation(attention)
    return model.to(dtype).eval()


def build_sigma_core(dtype=torch.bfloat16, backbone_class=None):
    """SigmaModel at the default config around a random DINOv2-Base (11 layers: the deepest tap),
    with a random CLIP-base-sized text tower (a word tokenizer: no download), on the GPU.
    `backbone_class(dinov2, taps)` replaces `DinoBackbone` (bench_train.py's before/after)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sigma_fast.config import SigmaConfig
    from sigma_fast.model import DinoBackbone, SigmaModel, TextEncoder
    from sigma_fast.tiny import BASE_VOCABULARY, build_word_tokenizer

    config = SigmaConfig(backbone="random", text_encoder="random", taps=TAPS, image_size=IMAGE_SIZE)
    tokenizer = build_word_tokenizer(BASE_VOCABULARY)
    with torch.device("cuda"):
        text_model = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id))
    backbone = (backbone_class or DinoBackbone)(build_dinov2(max(TAPS)), config.taps)
    text = TextEncoder(text_model, tokenizer, config.dim, config.max_text_tokens)
    return SigmaModel(config, backbone, text).to(device="cuda", dtype=dtype).eval()


def random_images(pairs, dtype=torch.bfloat16):
    """2 * pairs normalised-scale images (originals first), the same in every row."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(2 * pairs, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator, device="cuda")
    return images.to(dtype)


def core_inputs(model, pairs):
    """-> the core's arguments for `pairs` pairs: x_orig, x_edit, text tokens, text mask, prior."""
    from sigma_fast.grounding import parse_instruction

    images = random_images(pairs)
    instructions = ["replace the red car with a blue bus"] * pairs
    with torch.inference_mode():
        tokens, mask = model.encode_text(instructions, [parse_instruction(t) for t in instructions])
    prior = torch.rand(pairs, model.grid, model.grid, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    return images[:pairs], images[pairs:], tokens, mask, prior


def hf_forward(model, pixels):
    return model(pixel_values=pixels, output_hidden_states=True).hidden_states


def graphed(model, pairs):
    """The model's forward captured in a CUDA graph for `pairs` pairs (helper module of issue 11)."""
    graphs = pytest.importorskip("sigma_fast.model.graphs", reason="no CUDA-graph runner (sigma_fast.model.graphs)")
    return graphs.GraphedForward(model, pairs, torch.device("cuda"), torch.bfloat16)


@pytest.mark.parametrize("pairs", PAIR_COUNTS)
def test_hf_fp32_eager(benchmark, pairs):
    model = build_dinov2(12, torch.float32, "eager")
    x = random_images(pairs, torch.float32)
    measure(benchmark, "hf_fp32_eager", pairs, lambda: hf_forward(model, x), warmup_rounds=2)


@pytest.mark.parametrize("pairs", PAIR_COUNTS)
def test_hf_bf16_sdpa(benchmark, pairs):
    model = build_dinov2(max(TAPS), torch.bfloat16)
    x = random_images(pairs)
    measure(benchmark, "hf_bf16_sdpa", pairs, lambda: hf_forward(model, x))


@pytest.mark.parametrize("pairs", PAIR_COUNTS)
def test_hf_bf16_compile(benchmark, pairs):
    model = torch.compile(build_dinov2(max(TAPS), torch.bfloat16), dynamic=False)
    x = random_images(pairs)
    measure(benchmark, "hf_bf16_compile", pairs, lambda: hf_forward(model, x))


@pytest.mark.parametrize("pairs", PAIR_COUNTS)
def test_core_bf16_eager(benchmark, pairs):
    model = build_sigma_core()
    inputs = core_inputs(model, pairs)
    measure(benchmark, "core_bf16_eager", pairs, lambda: model(*inputs))


@pytest.mark.parametrize("pairs", PAIR_COUNTS)
def test_core_bf16_graph(benchmark, pairs):
    model = build_sigma_core()
    inputs = core_inputs(model, pairs)
    forward = graphed(model, pairs)
    measure(benchmark, "core_bf16_graph", pairs, lambda: forward(*inputs))


def tap_relative_errors(taps, reference):
    return [((tap.float() - ref.float()).norm() / ref.float().norm()).item() for tap, ref in zip(taps, reference)]


@pytest.mark.parametrize("pairs", PAIR_COUNTS)
def test_core_fp8_graph(benchmark, pairs):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need compute capability 8.9 or newer")
    model = build_sigma_core()
    if not hasattr(model.backbone, "quantize_fp8"):
        pytest.skip("the backbone has no quantize_fp8() (FP8 mode not available)")
    inputs = core_inputs(model, pairs)
    images = torch.cat(inputs[:2])[:FP8_AGREEMENT_IMAGES]
    with torch.inference_mode():
        reference = model.backbone(images)
        model.backbone.quantize_fp8()
        errors = tap_relative_errors(model.backbone(images), reference)
    forward = graphed(model, pairs)
    measure(benchmark, "core_fp8_graph", pairs, lambda: forward(*inputs))
    benchmark.extra_info["fp8_tap_rel_error"] = errors
    benchmark.extra_info["fp8_tap_images"] = FP8_AGREEMENT_IMAGES
