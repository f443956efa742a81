import numpy as np
import pytest
import torch

from sigma_fast.metrics import PixelMetrics, pixel_scores, roc_auc

EPS = 1e-8


def test_hand_computed_case():
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8) * 255
    pred = np.array([[0.9, 0.4, 0.7, 0.1]], dtype=np.float32)
    # pred > 0.5: [1, 0, 1, 0] -> TP 1, FP 1, FN 1
    scores = pixel_scores(pred, gt)
    p = r = 1 / (2 + EPS)
    assert scores["f1"] == pytest.approx(2 * p * r / (p + r + EPS), abs=1e-9)
    assert scores["iou"] == pytest.approx(1 / (3 + EPS), abs=1e-9)
    # positives {0.9, 0.4} vs negatives {0.7, 0.1}: pairs won 0.9>0.7, 0.9>0.1, 0.4>0.1 -> 3/4
    assert scores["auc"] == pytest.approx(0.75)


def test_threshold_is_strict_and_uint8_masks_scale():
    gt = np.array([[255, 0]], dtype=np.uint8)
    assert pixel_scores(np.array([[0.5, 0.0]]), gt)["f1"] == pytest.approx(0.0, abs=1e-6)
    assert pixel_scores(np.array([[255, 0]], dtype=np.uint8), gt)["f1"] == pytest.approx(1.0, abs=1e-6)


def test_empty_ground_truth():
    scores = pixel_scores(np.array([[0.9, 0.1]]), np.zeros((1, 2), np.uint8))
    assert scores == {"f1": 0.0, "iou": 0.0, "auc": 0.0}


def test_auc_matches_pairwise_definition_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200,), generator=generator).float() / 4
    labels = torch.rand(200, generator=generator) > 0.6
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
    assert roc_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


def test_mismatched_sizes_raise():
    with pytest.raises(ValueError, match="differ in size"):
        pixel_scores(np.zeros((2, 3)), np.zeros((3, 2), np.uint8))


def test_rgb_ground_truth_uses_channel_mean():
    gt = np.zeros((1, 2, 3), np.uint8)
    gt[0, 0] = 255
    gt[0, 1] = (255, 0, 0)  # mean 85 -> background
    assert pixel_scores(np.array([[1.0, 0.0]]), gt)["f1"] == pytest.approx(1.0, abs=1e-6)


def test_mean_and_pooled_aggregation():
    metrics = PixelMetrics()
    # image 1: TP 2, FP 0, FN 0 (perfect); image 2: TP 1, FP 1, FN 2; image 3 authentic (skipped)
    metrics.update(np.array([[1.0, 1.0, 0.0]]), np.array([[1, 1, 0]], np.uint8) * 255)
    metrics.update(np.array([[1.0, 0.0, 0.0, 1.0]]), np.array([[1, 1, 1, 0]], np.uint8) * 255)
    assert metrics.update(np.array([[1.0]]), np.array([[0]], np.uint8)) is None
    result = metrics.compute()
    assert result["images"] == 2
    f1_second = 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    assert result["mean"]["f1"] == pytest.approx((1.0 + f1_second) / 2, abs=1e-6)
    assert result["mean"]["iou"] == pytest.approx((1.0 + 1 / 4) / 2, abs=1e-6)
    # pooled: TP 3, FP 1, FN 2
    assert result["pooled"]["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6), abs=1e-6)
    assert result["pooled"]["iou"] == pytest.approx(3 / 6, abs=1e-6)
    assert 0.0 <= result["pooled"]["auc"] <= 1.0


def test_pooled_auc_equals_exact_auc_on_binned_scores():
    generator = torch.Generator().manual_seed(1)
    metrics = PixelMetrics()
    preds, gts = [], []
    for _ in range(3):
        pred = torch.randint(0, 100, (8, 8), generator=generator).float() / 99
        gt = torch.rand(8, 8, generator=generator) > 0.5
        metrics.update(pred, gt)
        preds.append(pred.flatten())
        gts.append(gt.flatten())
    exact = roc_auc(torch.cat(preds), torch.cat(gts))
    assert metrics.compute()["pooled"]["auc"] == pytest.approx(exact, abs=1e-9)


def test_include_authentic_scores_them_zero():
    metrics = PixelMetrics(include_authentic=True)
    assert metrics.update(np.array([[0.0, 1.0]]), np.zeros((1, 2), np.uint8))["f1"] == pytest.approx(0.0)
    assert metrics.compute()["images"] == 1
