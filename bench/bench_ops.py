"""GPU throughput of the fused pre/post-processing ops (sigma_fast._C's CUDA kernels) against their
PyTorch references, measured side by side in one run, at the shapes annotation runs: 64 pairs of
images at 512x512, 1024x768 and a mixed batch; postprocess_masks resizes the decoder's full 518x518
logits (sigma_fast/model/decoder.py emits them at the backbone's input size) to each image's size.

Floors (bytes moved / 4.19e12 B/s, PERF.md's H200 copy bandwidth):
- preprocess_pairs: the uint8 images in (both of each pair) + 2 x 64 x 3 x 518 x 518 bf16 out;
  at 512x512, 100 MB + 206 MB -> 73 us.
- postprocess_masks: 64 x 518 x 518 float32 logits in + a uint8 mask and a float32 probability
  per output pixel (what annotate_batch returns); at 512x512, 69 MB + 84 MB -> 36 us.
- vae_roundtrip_composite: float32 decoder output, uint8 edit and float32 mask in, uint8 image out.

Each round times CALLS back-to-back calls with CUDA events (timing.median_seconds); the reference
row of each case runs first, so the fused row's extra_info has `ratio_to_reference` (reference
median / fused median) from the same run, with `pairs`, `pairs_per_s`, `floor_s`, `median_ms` and
`share_of_floor` (floor_s / median). Run on a GPU with `pytest bench/bench_ops.py --benchmark-only`;
skipped without CUDA.
"""
import pytest
import torch

from sigma_fast import _ext, ops
from sigma_fast.ops import reference
from timing import median_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy on an H200 (PERF.md)
ROUNDS, WARMUP_ROUNDS, CALLS = 10, 2, 10
PAIRS = 64
SIZE = 518  # the backbone's input, and the decoder's logits
BATCHES = {
    "512x512": [(512, 512)] * PAIRS,
    "1024x768": [(768, 1024)] * PAIRS,
    "mixed": [(512, 512), (768, 1024), (1024, 768), (333, 500), (1080, 1920), (256, 256), (600, 800), (7, 3000)]
    * (PAIRS // 8),
}
IMPLEMENTATIONS = {"reference": reference, "fused": ops}
CASES = [(batch, implementation) for batch in BATCHES for implementation in IMPLEMENTATIONS]
IDS = [f"{batch}-{implementation}" for batch, implementation in CASES]
# Seconds per call of the rows measured so far in this process, by benchmark name.
MEDIANS = {}


def measure(benchmark, request, implementation, batch, bytes_moved, function, *args):
    if implementation == "fused" and not _ext.has_cuda_ops():
        pytest.skip("sigma_fast._C is built without CUDA")

    def calls():
        for _ in range(CALLS):
            function(*args)

    median = median_seconds(benchmark, calls, ROUNDS, WARMUP_ROUNDS) / CALLS
    MEDIANS[request.node.name] = median
    floor_s = bytes_moved / COPY_BANDWIDTH
    benchmark.extra_info.update(pairs=PAIRS, pairs_per_s=PAIRS / median, floor_s=floor_s, median_ms=median * 1e3,
                                share_of_floor=floor_s / median)
    if implementation == "fused":
        baseline = f"{request.node.originalname}[{batch}-reference]"
        benchmark.extra_info["baseline"] = baseline
        if baseline in MEDIANS:
            benchmark.extra_info["ratio_to_reference"] = MEDIANS[baseline] / median


def pixels(sizes):
    return sum(height * width for height, width in sizes)


@pytest.mark.parametrize("batch, implementation", CASES, ids=IDS)
def test_preprocess_pairs(benchmark, request, batch, implementation):
    sizes = BATCHES[batch]
    generator = torch.Generator().manual_seed(0)
    originals = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator).cuda() for h, w in sizes]
    editeds = [image.flip(0).contiguous() for image in originals]
    # uint8 in (both images of each pair), bf16 out.
    bytes_moved = 2 * 3 * pixels(sizes) + 2 * PAIRS * 3 * SIZE * SIZE * 2
    measure(benchmark, request, implementation, batch, bytes_moved,
            IMPLEMENTATIONS[implementation].preprocess_pairs, originals, editeds, SIZE, torch.bfloat16)


@pytest.mark.parametrize("batch, implementation", CASES, ids=IDS)
def test_postprocess_masks(benchmark, request, batch, implementation):
    sizes = BATCHES[batch]
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(PAIRS, 1, SIZE, SIZE, generator=generator) * 3).cuda()
    # float32 logits in; uint8 masks and float32 probability maps out (what annotate_batch returns).
    bytes_moved = logits.numel() * 4 + pixels(sizes) * (1 + 4)
    measure(benchmark, request, implementation, batch, bytes_moved,
            IMPLEMENTATIONS[implementation].postprocess_masks, logits, sizes, 0.5, True)


@pytest.mark.parametrize("batch, implementation", CASES[:2], ids=IDS[:2])
def test_vae_roundtrip_composite(benchmark, request, batch, implementation):
    height, width = BATCHES[batch][0]
    generator = torch.Generator().manual_seed(2)
    x_vae = (torch.randn(PAIRS, 3, height, width, generator=generator) * 0.6).cuda()
    x_edit = torch.randint(0, 256, (PAIRS, height, width, 3), dtype=torch.uint8, generator=generator).cuda()
    edit_mask = torch.rand(PAIRS, height, width, generator=generator).cuda()
    # float32 decoder output, uint8 edit and float32 mask in; uint8 image out.
    bytes_moved = PAIRS * height * width * (3 * 4 + 3 + 4 + 3)
    measure(benchmark, request, implementation, batch, bytes_moved,
            IMPLEMENTATIONS[implementation].vae_roundtrip_composite, x_vae, x_edit, edit_mask)
