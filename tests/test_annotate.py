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
