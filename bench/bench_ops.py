"""GPU throughput of the fused pre/post-processing ops (sigma_fast._C's CUDA kernels) against their
PyTorch references, measured side by side in one run, at 64 pairs of 512x512 and a mixed-size batch.

Every benchmark records `extra_info`: `pairs` (pairs per call), `floor_s` (bytes moved / the measured
copy bandwidth) and, for the fused ops, `baseline` (the name of the reference benchmark) for
bench/summarize.py. Skipped without a GPU.
"""
import pytest
import torch

from sigma_fast import _ext, ops
from sigma_fast.ops import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

COPY_BANDWIDTH = 4.19e12  # B/s, device-to-device copy on an H200 (PERF.md)
PAIRS = 64
BATCHES = {
    "uniform": [(512, 512)] * PAIRS,
    "mixed": [(512, 512), (768, 1024), (1024, 768), (333, 500), (1080, 1920), (256, 256), (600, 800), (7, 3000)]
    * (PAIRS // 8),
}
LOGITS = (148, 148)
IMPLEMENTATIONS = {"fused": ops, "reference": reference}
CASES = [(batch, implementation) for batch in BATCHES for implementation in IMPLEMENTATIONS]
IDS = [f"{batch}-{implementation}" for batch, implementation in CASES]


def measure(benchmark, request, implementation, batch, bytes_moved, function, *args, **kwargs):
    if implementation == "fused" and not _ext.has_cuda_ops():
        pytest.skip("sigma_fast._C is built without CUDA")

    def call():
        function(*args, **kwargs)
        torch.cuda.synchronize()

    benchmark.extra_info["pairs"] = PAIRS
    benchmark.extra_info["floor_s"] = bytes_moved / COPY_BANDWIDTH
    if implementation == "fused":
        benchmark.extra_info["baseline"] = f"{request.node.originalname}[{batch}-reference]"
    benchmark.pedantic(call, rounds=20, iterations=1, warmup_rounds=2)


def pixels(sizes):
    return sum(height * width for height, width in sizes)


@pytest.mark.parametrize("batch, implementation", CASES, ids=IDS)
def test_preprocess_pairs(benchmark, request, batch, implementation):
    sizes = BATCHES[batch]
    generator = torch.Generator().manual_seed(0)
    originals = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator).cuda() for h, w in sizes]
    editeds = [image.flip(0).contiguous() for image in originals]
    # uint8 in (both images of each pair), bf16 out.
    bytes_moved = 2 * 3 * pixels(sizes) + 2 * PAIRS * 3 * 518 * 518 * 2
    measure(benchmark, request, implementation, batch, bytes_moved,
            IMPLEMENTATIONS[implementation].preprocess_pairs, originals, editeds, 518, torch.bfloat16)


@pytest.mark.parametrize("batch, implementation", CASES, ids=IDS)
def test_postprocess_masks(benchmark, request, batch, implementation):
    sizes = BATCHES[batch]
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(PAIRS, 1, *LOGITS, generator=generator) * 3).cuda()
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
