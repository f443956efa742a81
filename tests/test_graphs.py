import threading
import time

import numpy as np
import pytest
import torch

from sigma_fast.model import graphs
from sigma_fast.model.graphs import GraphCache, GraphedForward

from conftest import random_image


def run_threads(target, count):
    """Run target(index) in `count` threads started together; re-raise the first error."""
    errors, start = [], threading.Barrier(count)

    def work(index):
        try:
            start.wait()
            target(index)
        except Exception as error:  # noqa: BLE001 (re-raised below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_graphs_need_cuda():
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedForward(torch.nn.Identity(), 2, "cpu", torch.float32)
    with pytest.raises(ValueError, match="copies"):
        GraphCache(torch.nn.Identity(), "cpu", torch.float32, copies=0)


class FakeGraphed:
    """Stands in for GraphedForward on the CPU: records how many calls overlap on one instance."""

    made = []

    def __init__(self, model, batch, device, dtype):
        self.batch, self.active, self.most_active = batch, 0, 0
        FakeGraphed.made.append(self)

    def __call__(self, x_orig, x_edit, text_tokens, text_mask, prior=None):
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        time.sleep(0.01)
        self.active -= 1
        return x_orig.sum((1, 2, 3))


@pytest.mark.parametrize("copies", [1, 2])
def test_cache_never_shares_a_graph_between_calls_in_flight(monkeypatch, copies):
    monkeypatch.setattr(graphs, "GraphedForward", FakeGraphed)
    FakeGraphed.made = []
    cache = GraphCache(torch.nn.Identity(), "cpu", torch.float32, copies=copies)
    tokens, mask = torch.zeros(3, 5, 4), torch.ones(3, 5, dtype=torch.bool)
    shapes = [torch.ones(3, 3, 8, 8), torch.ones(2, 3, 8, 8)]

    def call(index):
        for _ in range(5):
            x = shapes[index % 2]
            assert torch.equal(cache(x, x, tokens[:len(x)], mask[:len(x)]), x.sum((1, 2, 3)))

    run_threads(call, 6)
    assert all(graphed.most_active == 1 for graphed in FakeGraphed.made)
    assert sorted(graphed.batch for graphed in FakeGraphed.made) == sorted([2, 3] * copies)
    assert cache.graphs() == 2 * copies


# GPU: the tiny checkpoint on CUDA in bf16.

@pytest.fixture(scope="module")
def cuda_model(tiny_checkpoint):
    from sigma_fast.model import SigmaModel

    return SigmaModel.from_pretrained(tiny_checkpoint, device="cuda", dtype=torch.bfloat16)


def model_inputs(model, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    size, grid = model.config.image_size, model.grid
    texts = ["add a red hat to the man", "remove the dog", "make it look like winter"]
    from sigma_fast.grounding import parse_instruction

    instructions = [texts[(seed + i) % len(texts)] for i in range(batch)]
    with torch.inference_mode():
        tokens, mask = model.encode_text(instructions, [parse_instruction(text) for text in instructions])
    images = torch.randn(2, batch, 3, size, size, generator=generator).to("cuda", torch.bfloat16)
    prior = torch.rand(batch, grid, grid, generator=generator).to("cuda")
    return images[0], images[1], tokens, mask, prior


@pytest.mark.gpu
def test_graphed_forward_equals_eager(cuda_model):
    graphed = GraphedForward(cuda_model, 3, "cuda", torch.bfloat16)
    first, second = model_inputs(cuda_model, 3, seed=1), model_inputs(cuda_model, 3, seed=2)
    with torch.inference_mode():
        expected = [cuda_model(*first), cuda_model(*second), cuda_model(*second[:4])]
    got_first = graphed(*first)
    got_second = graphed(*second)
    got_flat = graphed(*second[:4])  # prior None: the flat prior
    torch.testing.assert_close(got_first, expected[0], atol=2e-2, rtol=2e-2)  # still intact after later replays
    torch.testing.assert_close(got_second, expected[1], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_flat, expected[2], atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="captured for shape"):
        graphed(*model_inputs(cuda_model, 2, seed=3))


@pytest.mark.gpu
def test_forward_has_no_host_sync(cuda_model):
    inputs = model_inputs(cuda_model, 2, seed=4)
    graphed = GraphedForward(cuda_model, 2, "cuda", torch.bfloat16)
    graphed(*inputs)  # capture first: capturing synchronizes on purpose
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            cuda_model(*inputs)
        graphed(*inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_cache_from_threads_on_their_own_streams_equals_serial(cuda_model):
    cache = GraphCache(cuda_model, "cuda", torch.bfloat16, copies=2)
    jobs = [model_inputs(cuda_model, 2, seed=10 + index) for index in range(4)]
    serial = [cache(*job).cpu() for job in jobs]
    results = [None] * 4

    def call(index):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                results[index] = cache(*jobs[index])
            results[index] = results[index].cpu()

    run_threads(call, 4)
    for expected, got in zip(serial, results):
        assert torch.equal(expected, got)
    assert cache.graphs() <= 2


def annotation_pairs(count, seed):
    originals = [random_image(40 + 5 * i, 60, seed + i) for i in range(count)]
    editeds = [random_image(40 + 5 * i, 60, seed + 50 + i) for i in range(count)]
    texts = ["add a red hat to the man", "remove the dog", "make it look like winter"]
    return originals, editeds, [texts[(seed + i) % len(texts)] for i in range(count)]


@pytest.mark.gpu
def test_annotator_graphs_on_and_off_agree(tiny_checkpoint):
    from sigma_fast.annotate import Annotator

    originals, editeds, instructions = annotation_pairs(5, seed=0)
    graphed = Annotator.from_pretrained(tiny_checkpoint, device="cuda", dtype="bf16", batch_size=4)
    eager = Annotator.from_pretrained(tiny_checkpoint, device="cuda", dtype="bf16", batch_size=4, cuda_graphs=False)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    for a, b in zip(graphed.annotate_batch(originals, editeds, instructions),
                    eager.annotate_batch(originals, editeds, instructions)):
        np.testing.assert_allclose(a.prob, b.prob, atol=2e-2)
        assert (a.mask == b.mask).mean() > 0.99


@pytest.mark.gpu
def test_annotator_with_graphs_from_threads_equals_serial(tiny_checkpoint):
    from sigma_fast.annotate import Annotator

    annotator = Annotator.from_pretrained(tiny_checkpoint, device="cuda", dtype="bf16", batch_size=2)
    jobs = [annotation_pairs(3, seed=10 * index) for index in range(4)]
    serial = [annotator.annotate_batch(*job) for job in jobs]
    results = [None] * 4

    def call(index):
        for _ in range(3):
            results[index] = annotator.annotate_batch(*jobs[index])

    run_threads(call, 4)
    for expected, got in zip(serial, results):
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a.prob, b.prob)
            np.testing.assert_array_equal(a.mask, b.mask)
