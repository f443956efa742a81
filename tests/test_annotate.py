import numpy as np
import pytest
import torch
from PIL import Image

import sigma_fast
from sigma_fast.annotate import Annotation, Annotator, default_checkpoint
from sigma_fast.grounding import EditTuple
from sigma_fast.io.images import ImageLoadError

from conftest import random_image


@pytest.fixture(scope="module")
def annotator(tiny_checkpoint):
    return Annotator.from_pretrained(tiny_checkpoint, device="cpu", batch_size=2)


def pairs():
    originals = [random_image(40, 60, 0), random_image(33, 17, 1), random_image(64, 64, 2)]
    editeds = [random_image(40, 60, 10), random_image(50, 20, 11), random_image(64, 64, 12)]
    return originals, editeds, ["add a red hat to the man", "remove the dog", "make it look like winter"]


def test_results_follow_the_contract(annotator):
    originals, editeds, instructions = pairs()
    results = annotator.annotate_batch(originals, editeds, instructions)
    assert len(results) == 3
    for result, edited in zip(results, editeds):
        assert isinstance(result, Annotation)
        assert result.mask.shape == tuple(edited.shape[:2]) and result.mask.dtype == np.uint8
        assert set(np.unique(result.mask)) <= {0, 255}
        assert result.prob.shape == result.mask.shape and result.prob.dtype == np.float32
        assert 0.0 <= result.prob.min() and result.prob.max() <= 1.0
        np.testing.assert_array_equal(result.mask == 255, result.prob > annotator.threshold)
        assert 0.0 <= result.score <= 1.0
        assert isinstance(result.edit, EditTuple)
    assert results[1].edit.action == "remove"


def test_deterministic_and_independent_of_batching(tiny_checkpoint, annotator):
    originals, editeds, instructions = pairs()
    first = annotator.annotate_batch(originals, editeds, instructions)
    second = annotator.annotate_batch(originals, editeds, instructions)
    one_by_one = Annotator.from_pretrained(tiny_checkpoint, device="cpu", batch_size=1)
    third = one_by_one.annotate_batch(originals, editeds, instructions)
    for a, b, c in zip(first, second, third):
        np.testing.assert_array_equal(a.prob, b.prob)
        np.testing.assert_allclose(a.prob, c.prob, atol=1e-5)


def test_input_forms_give_the_same_result(annotator, tmp_path):
    originals, editeds, instructions = pairs()
    path = tmp_path / "edited.png"
    Image.fromarray(editeds[0].numpy()).save(path)
    base = annotator.annotate_batch(originals[:1], editeds[:1], instructions[:1])[0]
    for form in (str(path), path.read_bytes(), Image.open(path), editeds[0].numpy(), editeds[0].permute(2, 0, 1)):
        result = annotator.annotate_batch([originals[0].numpy()], [form], instructions[:1])[0]
        np.testing.assert_array_equal(result.prob, base.prob)


def test_threshold_override(annotator):
    originals, editeds, instructions = pairs()
    low = annotator.annotate_batch(originals, editeds, instructions, threshold=0.01)
    high = annotator.annotate_batch(originals, editeds, instructions, threshold=0.99)
    assert all((lo.mask >= hi.mask).all() for lo, hi in zip(low, high))


def test_bf16_runs_and_roughly_agrees(tiny_checkpoint, annotator):
    originals, editeds, instructions = pairs()
    fp32 = annotator.annotate_batch(originals, editeds, instructions)
    bf16 = Annotator.from_pretrained(tiny_checkpoint, device="cpu", dtype="bf16").annotate_batch(
        originals, editeds, instructions)
    for a, b in zip(fp32, bf16):
        assert b.prob.dtype == np.float32
        assert np.abs(a.prob - b.prob).max() < 0.1


def test_bad_inputs(annotator):
    originals, editeds, instructions = pairs()
    with pytest.raises(ValueError, match="pair up"):
        annotator.annotate_batch(originals, editeds[:2], instructions)
    with pytest.raises(TypeError, match="list of strings"):
        annotator.annotate_batch(originals[:1], editeds[:1], "add a hat")
    with pytest.raises(ImageLoadError, match="file not found"):
        annotator.annotate_batch(["/missing.png"], editeds[:1], instructions[:1])
    with pytest.raises(ValueError, match="unknown dtype"):
        Annotator(annotator.model, dtype="int8")


def test_empty_instruction_still_annotates(annotator):
    originals, editeds, _ = pairs()
    result = annotator.annotate_batch(originals[:1], editeds[:1], [""])[0]
    assert np.isfinite(result.prob).all()


def test_module_level_default_from_environment(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("SIGMA_FAST_CHECKPOINT", tiny_checkpoint)
    assert default_checkpoint() == tiny_checkpoint
    originals, editeds, instructions = pairs()
    results = sigma_fast.annotate_batch(originals, editeds, instructions)
    assert [r.mask.shape for r in results] == [tuple(e.shape[:2]) for e in editeds]


def test_cuda_request_without_gpu_is_clear(annotator):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no GPU"):
        Annotator(annotator.model, device="cuda")


def more_pairs(count, seed):
    originals = [random_image(30 + 3 * i, 40, seed + i) for i in range(count)]
    editeds = [random_image(30 + 3 * i, 40, seed + 100 + i) for i in range(count)]
    actions = ["add a red hat to the man", "remove the dog", "make it look like winter", "replace the cat with a dog"]
    return originals, editeds, [actions[(seed + i) % len(actions)] for i in range(count)]


def test_a_pair_does_not_depend_on_its_batch_mates(tiny_checkpoint):
    annotator = Annotator.from_pretrained(tiny_checkpoint, device="cpu", batch_size=4)
    originals, editeds, instructions = more_pairs(4, seed=20)
    full = annotator.annotate_batch(originals, editeds, instructions)  # chunk of batch_size
    short = annotator.annotate_batch(originals[1:], editeds[1:], instructions[1:])  # chunk of 3, padded
    for index in range(4):
        alone = annotator.annotate_batch(originals[index:index + 1], editeds[index:index + 1],
                                         instructions[index:index + 1])[0]  # chunk of 1, padded
        np.testing.assert_array_equal(alone.prob, full[index].prob)
        np.testing.assert_array_equal(alone.mask, full[index].mask)
        assert alone.score == full[index].score
        if index:
            np.testing.assert_array_equal(short[index - 1].prob, full[index].prob)
            np.testing.assert_array_equal(short[index - 1].mask, full[index].mask)


def test_concurrent_calls_equal_serial(tiny_checkpoint):
    import threading

    annotator = Annotator.from_pretrained(tiny_checkpoint, device="cpu", batch_size=2)
    jobs = [more_pairs(3, seed=40 + 10 * thread) for thread in range(4)]
    serial = [annotator.annotate_batch(*job) for job in jobs]
    concurrent, errors, start = [None] * 4, [], threading.Barrier(4)

    def work(index):
        try:
            start.wait()
            for _ in range(2):
                concurrent[index] = annotator.annotate_batch(*jobs[index])
        except Exception as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for expected, got in zip(serial, concurrent):
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a.prob, b.prob)
            np.testing.assert_array_equal(a.mask, b.mask)
            assert a.edit == b.edit


def test_cuda_graphs_flag_is_ignored_on_the_cpu(annotator):
    assert annotator.cuda_graphs is False
    assert Annotator(annotator.model, device="cpu", cuda_graphs=True).cuda_graphs is False


def test_fp8_means_bf16_with_a_quantized_backbone(tiny_checkpoint):
    from sigma_fast.annotate import resolve_dtype, resolve_precision

    assert resolve_dtype("fp8", torch.device("cpu")) == torch.bfloat16
    assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, "bf16")
    assert resolve_precision(None, torch.device("cpu")) == (torch.float32, "fp32")
    annotator = Annotator.from_pretrained(tiny_checkpoint, device="cpu", dtype="fp8", batch_size=2)
    assert (annotator.dtype, annotator.precision) == (torch.bfloat16, "fp8")
    assert annotator.model.backbone.precision == "fp8"
    assert next(annotator.model.parameters()).dtype == torch.bfloat16
    originals, editeds, instructions = pairs()
    assert len(annotator.annotate_batch(originals, editeds, instructions)) == 3


def demo_pairs():
    import json
    import os

    from sigma_fast.annotate import EMBEDDED_CHECKPOINT

    root = os.path.join(os.path.dirname(EMBEDDED_CHECKPOINT), "demo_pairs")
    with open(os.path.join(root, "pairs.jsonl")) as handle:
        rows = [json.loads(line) for line in handle]
    return ([os.path.join(root, row["original"]) for row in rows], [os.path.join(root, row["edited"]) for row in rows],
            [row["instruction"] for row in rows])


def fp8_agreement(device):
    """Mean mask IoU of the FP8 annotator against bf16 on the embedded demo model's sample pairs."""
    originals, editeds, instructions = demo_pairs()
    from sigma_fast.annotate import EMBEDDED_CHECKPOINT

    results = {dtype: Annotator.from_pretrained(EMBEDDED_CHECKPOINT, device=device, dtype=dtype, batch_size=8).annotate_batch(
        originals, editeds, instructions) for dtype in ("bf16", "fp8")}
    return np.mean([mask_iou(a.mask, b.mask) for a, b in zip(results["bf16"], results["fp8"])])


def mask_iou(a, b):
    union = np.logical_or(a > 0, b > 0).sum()
    return 1.0 if union == 0 else np.logical_and(a > 0, b > 0).sum() / union


def test_fp8_masks_agree_with_bf16_on_the_cpu():
    # torch._scaled_mm runs on the CPU too: the same quantisation as on the GPU, emulated.
    assert fp8_agreement("cpu") >= 0.97


@pytest.mark.gpu
def test_fp8_masks_agree_with_bf16_on_the_gpu():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need Ada, Hopper or newer")
    assert fp8_agreement("cuda") >= 0.97


def test_prior_auto_falls_back_to_flat_offline(tiny_checkpoint, annotator, tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.WARNING)
    missing = {"detector": str(tmp_path / "no_detector"), "segmenter": str(tmp_path / "no_segmenter")}
    auto = Annotator.from_pretrained(tiny_checkpoint, device="cpu", batch_size=2, prior="auto",
                                     grounding_options=missing)
    assert not auto.grounding and caplog.text.count("prior auto") == 1
    originals, editeds, instructions = pairs()
    results = auto.annotate_batch(originals, editeds, instructions)
    flat = annotator.annotate_batch(originals, editeds, instructions)
    assert caplog.text.count("prior auto") == 1  # warned once, not per batch
    for result, expected in zip(results, flat):
        assert result.prior_flat and result.prior_mode == "none" and result.prior is None
        np.testing.assert_array_equal(result.prob, expected.prob)


def test_prior_auto_grounds_with_a_grounder(tiny_checkpoint):
    class Half:  # a grounder whose prior is 0.5 everywhere
        def priors(self, originals, editeds, edits, grid):
            from sigma_fast.grounding import GroundingResult

            return GroundingResult(prior=torch.full((len(originals), grid, grid), 0.5),
                                   flat=torch.zeros(len(originals), dtype=torch.bool), boxes=[[] for _ in originals])

    auto = Annotator.from_pretrained(tiny_checkpoint, device="cpu", batch_size=2, prior="auto", grounder=Half())
    originals, editeds, instructions = pairs()
    results = auto.annotate_batch(originals, editeds, instructions)
    assert auto.grounding and all(r.prior_mode == "grounded" and not r.prior_flat for r in results)
    assert np.allclose(results[0].prior, 0.5)
    with pytest.raises(ValueError, match="prior must be one of"):
        Annotator.from_pretrained(tiny_checkpoint, device="cpu", prior="sometimes")
