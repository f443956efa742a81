"""End-to-end `annotate` throughput next to the core's, and image decoding per backend (issue 14, item 5).

A generated manifest corpus of PAIRS pairs on disk: smooth random pictures with a local edit, sizes
drawn from 512-1024 px per side, three in four pairs JPEG (quality 90), one in four PNG. Rows, in
file order (the core first, so that the end-to-end row can report its ratio to it):
- `core_graph_e2e`: the SIGMA core (bench_core's `build_sigma_core`: DINOv2-Base 518, 11 layers, the
  fused head) replayed from a CUDA graph at the run's batch size, inputs already on the GPU;
- `e2e_annotate`: `annotate_corpus` on the corpus with an Annotator around the same core: bytes on
  disk -> decode -> model -> masks, IMDL-BenCo files and dataset.json on disk (wall time of a whole
  run, after a warm-up run on the first batches that captures the graphs);
- `decode_pil`, `decode_nvjpeg`, `decode_dali`: images/s decoding the corpus's JPEGs with PIL on one
  CPU thread, torchvision's `decode_jpeg` on the GPU (batches of DECODE_BATCH) and DALI's mixed
  decoder (skipped when not installed).
`extra_info`: `pairs_per_s` (images/s for the decode rows), `share_of_floor` (PERF.md's 1,074
pairs/s bound), `ratio_to_core` (e2e over the core in the same run), `ratio_to_pil` (decode rows
over one PIL thread), the card, the batch size and the decode threads.

Run on a GPU: `pytest bench/bench_e2e.py --benchmark-only`; everything skips without CUDA.
"""
import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from bench_core import FLOOR_PAIRS_PER_S, build_sigma_core, core_inputs, graphed
from timing import median_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

PAIRS, BATCH, SHARD = 512, 32, 128
SIDES = (512, 1024)
DECODE_IMAGES, DECODE_BATCH = 128, 64
RESULTS = {}  # row -> pairs/s (images/s for the decode rows) measured in this process


def picture(rng, height, width):
    """A smooth random RGB picture (a coarse grid upsampled): compresses like a photo, unlike noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def encoded(array, kind):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return buffer.getvalue()


def write_pair(folder, index):
    rng = np.random.default_rng(index)
    height, width = (int(side) for side in rng.integers(SIDES[0], SIDES[1] + 1, 2))
    original = picture(rng, height, width)
    edited = original.copy()
    top, left = height // 4, width // 4
    edited[top:top + height // 3, left:left + width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    kind, suffix = ("PNG", "png") if index % 4 == 3 else ("JPEG", "jpg")
    names = {}
    for role, array in (("original", original), ("edited", edited)):
        names[role] = f"images/{index:05d}_{role}.{suffix}"
        with open(os.path.join(folder, names[role]), "wb") as handle:
            handle.write(encoded(array, kind))
    return {"key": f"pair{index:05d}", **names, "instruction": "replace the box with a red square"}


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    """The generated manifest corpus (written once per run, with every core encoding)."""
    folder = str(tmp_path_factory.mktemp("e2e_corpus"))
    os.makedirs(os.path.join(folder, "images"))
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL's encoders release the GIL
        rows = list(pool.map(lambda index: write_pair(folder, index), range(PAIRS)))
    with open(os.path.join(folder, "pairs.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def jpeg_bytes(folder):
    names = sorted(name for name in os.listdir(os.path.join(folder, "images")) if name.endswith(".jpg"))
    return [open(os.path.join(folder, "images", name), "rb").read() for name in names[:DECODE_IMAGES]]


def record(info, row, per_s, unit="pairs"):
    RESULTS[row] = per_s
    info.update(row=row, card=torch.cuda.get_device_name(), unit=unit)
    info[f"{unit}_per_s"] = per_s
    if unit == "pairs":
        info["share_of_floor"] = per_s / FLOOR_PAIRS_PER_S


def test_core_graph_e2e(benchmark):
    model = build_sigma_core()
    inputs = core_inputs(model, BATCH)
    forward = graphed(model, BATCH)
    median = median_seconds(benchmark, lambda: forward(*inputs), rounds=20, warmup_rounds=3)
    record(benchmark.extra_info, "core_graph_e2e", BATCH / median)
    benchmark.extra_info["batch_size"] = BATCH


def test_e2e_annotate(benchmark, corpus_folder, tmp_path):
    from sigma_fast.annotate import Annotator
    from sigma_fast.io.corpora import open_corpus
    from sigma_fast.pipeline import annotate_corpus

    annotator = Annotator(build_sigma_core(), device="cuda", dtype="bf16", batch_size=BATCH)
    manifest, threads = os.path.join(corpus_folder, "pairs.jsonl"), os.cpu_count()
    options = {"shard_size": SHARD, "writer": "benco", "workers": threads, "progress": False, "overwrite": True}
    # warm-up: graph capture, kernel autotuning, the writers' first files
    annotate_corpus(annotator, open_corpus(manifest, limit=2 * BATCH), str(tmp_path / "warmup"), **options)
    walls = []

    def run():
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = annotate_corpus(annotator, open_corpus(manifest), str(out), **options)
        walls.append(time.perf_counter() - started)
        assert summary.annotated == PAIRS, summary

    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    record(benchmark.extra_info, "e2e_annotate", PAIRS / min(walls))
    benchmark.extra_info.update(pairs=PAIRS, batch_size=BATCH, decode_threads=threads, wall_s=walls)
    if "core_graph_e2e" in RESULTS:
        benchmark.extra_info["ratio_to_core"] = RESULTS["e2e_annotate"] / RESULTS["core_graph_e2e"]


def decode_row(benchmark, row, decode, images):
    """Times `decode()` (all of `images` once) and records images/s, and the ratio to one PIL thread."""
    seconds = []

    def timed():
        started = time.perf_counter()
        decode()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)

    benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)
    record(benchmark.extra_info, row, len(images) / min(seconds[1:]), unit="images")
    if row != "decode_pil" and "decode_pil" in RESULTS:
        benchmark.extra_info["ratio_to_pil"] = RESULTS[row] / RESULTS["decode_pil"]


def test_decode_pil(benchmark, corpus_folder):
    from sigma_fast.io.images import decode_image

    images = jpeg_bytes(corpus_folder)
    decode_row(benchmark, "decode_pil", lambda: [decode_image(data) for data in images], images)


def test_decode_nvjpeg(benchmark, corpus_folder):
    io_module = pytest.importorskip("torchvision.io", reason="torchvision is not installed")
    images = jpeg_bytes(corpus_folder)
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images]

    def decode():
        for start in range(0, len(tensors), DECODE_BATCH):
            io_module.decode_jpeg(tensors[start:start + DECODE_BATCH], device="cuda")

    decode_row(benchmark, "decode_nvjpeg", decode, images)


def test_decode_dali(benchmark, corpus_folder):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    from nvidia.dali import fn, pipeline_def

    images = jpeg_bytes(corpus_folder)
    batches = [images[start:start + DECODE_BATCH] for start in range(0, len(images), DECODE_BATCH)]
    arrays = [[np.frombuffer(data, dtype=np.uint8) for data in batch] for batch in batches]

    @pipeline_def(batch_size=DECODE_BATCH, num_threads=4, device_id=torch.cuda.current_device(), prefetch_queue_depth=1)
    def jpeg_pipeline():
        return fn.decoders.image(fn.external_source(name="jpegs", dtype=np.uint8), device="mixed")

    pipe = jpeg_pipeline()
    pipe.build()

    def decode():
        for batch in arrays:
            pipe.feed_input("jpegs", batch)
            pipe.run()

    decode_row(benchmark, "decode_dali", decode, images)
