import numpy as np
import pytest
import torch

from test_grounding_models import load, model_folders  # noqa: F401 (a fixture)

from sigma_fast.baselines import (FEATURE_FLOOR, GroundingBaseline, binarize, build_methods, calibrate_threshold,
                                  feature_baseline, feature_difference, feature_difference_mask, method_note,
                                  otsu_threshold, pixel_baseline, pixel_difference, pixel_difference_mask,
                                  probability_at)
from sigma_fast.model import DinoBackbone
from sigma_fast.tiny import TinyEncoderSpec, build_tiny_encoders

SPEC = TinyEncoderSpec(image_size=56, patch_size=8, backbone_layers=2)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    backbone_dir, _ = build_tiny_encoders(str(tmp_path_factory.mktemp("tiny")), SPEC)
    return DinoBackbone.from_pretrained(backbone_dir, taps=(1, 2))


def textured(seed, shape=(48, 64)):
    return np.random.default_rng(seed).integers(100, 256, (*shape, 3), dtype=np.uint8)


def test_otsu_splits_a_planted_two_level_image():
    values = np.full((40, 50), 0.2, np.float32)
    values[10:25, 5:30] = 0.7
    noisy = values + np.random.default_rng(0).normal(0, 0.02, values.shape)
    threshold = otsu_threshold(noisy)
    assert 0.3 < threshold < 0.6
    mask, _ = binarize(noisy, floor=0.0)
    np.testing.assert_array_equal(mask, values > 0.5)


def test_otsu_of_a_flat_map_keeps_it_empty():
    assert otsu_threshold(np.full((8, 8), 0.4)) == pytest.approx(0.4)
    assert not binarize(np.full((8, 8), 0.4), floor=0.0)[0].any()


def test_pixel_difference_finds_a_pasted_square():
    original = textured(1)
    edited = original.copy()
    edited[8:24, 16:40] = 0  # every pixel of the texture is >= 100: a change of at least 100 levels
    soft = pixel_difference(original, edited)
    assert soft.dtype == np.float32 and soft.shape == (48, 64)
    assert soft.min() >= 0 and soft.max() <= 1
    truth = np.zeros((48, 64), bool)
    truth[8:24, 16:40] = True
    np.testing.assert_array_equal(pixel_difference_mask(original, edited), truth)


def test_pixel_difference_is_at_the_edited_size_and_empty_for_an_identical_pair():
    original = textured(2, (96, 128))
    edited = torch.from_numpy(textured(3, (48, 64)))
    assert pixel_difference(original, edited).shape == (48, 64)
    same = textured(4)
    assert not pixel_difference_mask(same, same).any()


def test_feature_difference_of_an_identical_pair_is_empty(backbone):
    image = textured(5)
    soft = feature_difference(image, image, backbone, SPEC.image_size)
    assert soft.shape == (48, 64) and soft.max() < FEATURE_FLOOR
    assert not feature_difference_mask(image, image, backbone, SPEC.image_size).any()


def test_feature_difference_is_high_where_the_image_changed(backbone):
    original = np.full((56, 56, 3), 120, np.uint8)
    edited = original.copy()
    edited[:, 28:] = textured(6, (56, 28))  # the right half changes
    soft = feature_difference(original, edited, backbone, SPEC.image_size)
    assert soft[:, 36:].mean() > 3 * soft[:, :20].mean()
    mask = feature_difference_mask(original, edited, backbone, SPEC.image_size)
    assert mask[:, 36:].mean() > 0.9 and mask[:, :20].mean() < 0.1


def test_probability_at_keeps_the_order_and_puts_the_threshold_at_one_half():
    soft = np.linspace(0, 1, 101, dtype=np.float32)
    prob = probability_at(soft, 0.3)
    assert np.all(np.diff(prob) > 0)
    np.testing.assert_array_equal(prob > 0.5, soft > 0.3)


def test_baseline_annotators_score_their_own_masks(backbone):
    original = textured(7)
    edited = original.copy()
    edited[10:30, 10:30] = 0
    for annotator in (pixel_baseline(), feature_baseline(backbone, SPEC.image_size)):
        (result,) = annotator.annotate_images([torch.from_numpy(original)], [torch.from_numpy(edited)],
                                              ["remove the square"])
        assert result.prob.shape == result.mask.shape == (48, 64)
        np.testing.assert_array_equal(result.mask > 0, result.prob > annotator.threshold)
        assert result.mask[15:25, 15:25].all()
        assert result.edit.action == "remove"


def test_calibrate_threshold_finds_the_level_between_planted_classes():
    rng = np.random.default_rng(8)
    scored = []
    for _ in range(3):
        gt = np.zeros((20, 20), bool)
        gt[5:12, 3:15] = True
        soft = np.where(gt, rng.uniform(0.4, 0.6, gt.shape), rng.uniform(0.0, 0.2, gt.shape))
        scored.append((soft, gt))
    threshold = calibrate_threshold(iter(scored + [(np.zeros((4, 4)), np.zeros((4, 4), bool))]))
    assert 0.2 <= threshold < 0.4 and threshold == int(threshold * 200) / 200
    with pytest.raises(ValueError):
        calibrate_threshold([(np.zeros((4, 4)), np.zeros((4, 4), bool))])


def test_calibrated_feature_baseline_uses_its_fixed_threshold(backbone):
    original = textured(9)
    edited = original.copy()
    edited[:, 32:] = 0
    gt = np.zeros((48, 64), bool)
    gt[:, 32:] = True
    baseline = feature_baseline(backbone, SPEC.image_size)
    threshold = baseline.calibrate([(torch.from_numpy(original), torch.from_numpy(edited), gt)])
    assert baseline.fixed == threshold and f"{threshold:g}" in baseline.note
    (result,) = baseline.annotate_images([torch.from_numpy(original)], [torch.from_numpy(edited)], ["remove it"])
    soft = feature_difference(original, edited, backbone, SPEC.image_size)
    np.testing.assert_array_equal(result.mask > 0, soft > threshold)


def test_build_methods_refuses_unknown_names_and_a_grounded_sigma():
    class Flat:
        prior_mode = "none"

    with pytest.raises(ValueError, match="unknown"):
        build_methods(["sigma", "nope"], Flat())
    flat = Flat()
    flat.prior_mode = "grounded"
    with pytest.raises(ValueError, match="sigma_grounded"):
        build_methods(["pixel"], flat)
    assert list(build_methods(["pixel"], Flat())) == ["pixel"]


def test_grounding_baseline_on_tiny_random_models(model_folders):  # noqa: F811 (the imported fixture)
    grounder = load(model_folders)
    baseline = GroundingBaseline(grounder)
    original = torch.from_numpy(textured(10, (96, 128)))
    edited = torch.from_numpy(textured(11, (60, 80)))
    local, whole = baseline.annotate_images([original, original], [edited, edited],
                                            ["remove the dog", "make it snowy"])
    assert local.mask.shape == local.prob.shape == (60, 80) and local.edit.action == "remove"
    assert local.mask.any()  # thresholds 0: every box is kept and segmented
    np.testing.assert_array_equal(local.mask > 0, local.prob > baseline.threshold)
    assert whole.edit.action == "global" and whole.mask.all()
    assert "no differencing" in method_note(baseline)
