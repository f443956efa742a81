"""Throughput of the SIGMA core at production size against the backbone as users run it, in one run.

The core (PERF.md's target): DINOv2-Base at 518x518 (random weights, the compute of
`facebook/dinov2-base`), 11 layers with taps 2, 5, 11, the fused differencing, two refinement blocks
and the decoder, prior given, text tokens precomputed; 32 pairs per call, bf16.
Baselines measured beside it, on the same backbone weights and the same 64 images:
- Hugging Face `Dinov2Model`, bf16, SDPA, `output_hidden_states=True` (all 12 layers);
- the same in fp32 with eager attention (what a new user writes); the core's speed-up over it is
  the ratio of the two medians in the table.
The three run in this order (file order) and share one backbone module, moved between dtypes.
Run on a GPU with `pytest bench/bench_core.py --benchmark-only`; everything skips without CUDA.
"""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

PAIRS, IMAGE_SIZE, TEXT_TOKENS = 32, 518, 32
ROUNDS, WARMUP_ROUNDS = 10, 3
PEAK_FLOPS = 787e12  # FLOP/s, dense bf16 matmul (PERF.md, H200)
TOKENS, WIDTH = 1370, 768
# PERF.md's work per image and layer: 24 T C^2 + 4 T^2 C
LAYER_FLOPS = 24 * TOKENS * WIDTH ** 2 + 4 * TOKENS ** 2 * WIDTH


def run(benchmark, fn, *, flops, baseline=None):
    def timed():
        result = fn()
        torch.cuda.synchronize()
        return result

    benchmark.extra_info.update(pairs=PAIRS, floor_s=flops / PEAK_FLOPS)
    if baseline:
        benchmark.extra_info["baseline"] = baseline
    with torch.inference_mode():
        benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)


def build_dinov2_base():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(image_size=IMAGE_SIZE)).eval()


def build_sigma_core(dinov2):
    """SigmaModel at the default config around `dinov2`, with a random CLIP-base-sized text tower
    (a word tokenizer: no download), on the GPU in bf16."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sigma_fast.config import SigmaConfig
    from sigma_fast.model import DinoBackbone, SigmaModel, TextEncoder
    from sigma_fast.tiny import BASE_VOCABULARY, build_word_tokenizer

    config = SigmaConfig(backbone="random", text_encoder="random")
    tokenizer = build_word_tokenizer(BASE_VOCABULARY)
    text_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    backbone = DinoBackbone(dinov2, config.taps)
    text = TextEncoder(text_model, tokenizer, config.dim, config.max_text_tokens)
    return SigmaModel(config, backbone, text).to(device="cuda", dtype=torch.bfloat16).eval()


def core_inputs(model, images):
    """-> the core's arguments for PAIRS pairs: x_orig, x_edit, text tokens, text mask, prior."""
    from sigma_fast.grounding import parse_instruction

    x = images.bfloat16()
    instructions = ["replace the red car with a blue bus"] * PAIRS
    with torch.inference_mode():
        tokens, mask = model.encode_text(instructions, [parse_instruction(t) for t in instructions])
    prior = torch.rand(PAIRS, model.grid, model.grid, device="cuda")
    return x[:PAIRS], x[PAIRS:], tokens, mask, prior


def random_images():
    generator = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(2 * PAIRS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator, device="cuda")


@pytest.fixture(scope="module")
def dinov2_base():
    return build_dinov2_base()


@pytest.fixture(scope="module")
def images():
    return random_images()


@pytest.fixture(scope="module")
def sigma_core(dinov2_base):
    return build_sigma_core(dinov2_base)


def test_sigma_core_bf16(benchmark, sigma_core, images):
    inputs = core_inputs(sigma_core, images)
    run(benchmark, lambda: sigma_core(*inputs), flops=2 * PAIRS * 11 * LAYER_FLOPS,
        baseline="test_hf_dinov2_bf16_sdpa")


def hf_forward(model, pixels):
    return model(pixel_values=pixels, output_hidden_states=True).hidden_states


def test_hf_dinov2_bf16_sdpa(benchmark, dinov2_base, images):
    model = dinov2_base.to(device="cuda", dtype=torch.bfloat16)
    model.set_attn_implementation("sdpa")
    x = images.bfloat16()
    run(benchmark, lambda: hf_forward(model, x), flops=2 * PAIRS * 12 * LAYER_FLOPS)


def test_hf_dinov2_fp32_eager(benchmark, dinov2_base, images):
    model = dinov2_base.to(device="cuda", dtype=torch.float32)
    model.set_attn_implementation("eager")
    run(benchmark, lambda: hf_forward(model, images), flops=2 * PAIRS * 12 * LAYER_FLOPS)
