import io

import numpy as np
import pytest
import torch
from imdlbenco import imdlbenco_evaluation
from PIL import Image

from sigma_fast.metrics import (PixelMetrics, ValueCounts, load_ground_truth, mask_rule, pixel_scores,
                                pooled_roc_auc, roc_auc)

EPS = 1e-8


def pairwise_auc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()


def png(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


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


def test_one_class_ground_truth_has_no_auc():
    assert pixel_scores(np.array([[0.9, 0.1]]), np.zeros((1, 2), np.uint8)) == {"f1": 0.0, "iou": 0.0, "auc": None}
    assert pixel_scores(np.array([[0.9, 0.1]]), np.full((1, 2), 255, np.uint8))["auc"] is None


def test_auc_matches_pairwise_definition_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200,), generator=generator).float() / 4
    labels = torch.rand(200, generator=generator) > 0.6
    assert roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)
    # a constant map is 0.5 whatever the pixel order
    assert roc_auc(torch.full((50,), 0.3), labels[:50]) == pytest.approx(0.5, abs=1e-12)


def test_auc_equals_sklearn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 7, (500,), generator=generator).float() / 6
    labels = torch.rand(500, generator=generator) > 0.7
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


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
    assert (result["averaging"], result["images"], result["empty_gt"]) == ("skip_empty", 2, 1)
    f1_second = 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    assert result["mean"]["f1"] == pytest.approx((1.0 + f1_second) / 2, abs=1e-6)
    assert result["mean"]["iou"] == pytest.approx((1.0 + 1 / 4) / 2, abs=1e-6)
    # pooled: TP 3, FP 1, FN 2
    assert result["pooled"]["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6), abs=1e-6)
    assert result["pooled"]["iou"] == pytest.approx(3 / 6, abs=1e-6)


def test_benco_averaging_scores_empty_ground_truth_zero():
    ours, benco = PixelMetrics(), PixelMetrics(averaging="benco")
    for metrics in (ours, benco):
        metrics.update(np.array([[0.9, 0.2]]), np.array([[255, 0]], np.uint8))
        metrics.update(np.array([[0.0, 1.0]]), np.zeros((1, 2), np.uint8))
    assert ours.compute()["mean"]["f1"] == pytest.approx(1.0, abs=1e-6)
    result = benco.compute()
    assert result["averaging"] == "benco" and result["images"] == 2
    assert result["mean"]["f1"] == pytest.approx(0.5, abs=1e-6)
    assert result["mean"]["auc"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    # the empty image's false positive enters the pooled counts: TP 1, FP 1
    assert result["pooled"]["iou"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="averaging"):
        PixelMetrics(averaging="mean")


def test_pooled_auc_is_exact_on_unbinned_scores(monkeypatch):
    import sigma_fast.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "COMPACT_VALUES", 50)  # exercises the chunked merge
    generator = torch.Generator().manual_seed(1)
    metrics, preds, gts = PixelMetrics(), [], []
    for _ in range(4):
        pred = torch.rand(8, 8, generator=generator) * 1e-4 + 0.5  # closer than any 10,000-bin histogram
        pred[:2] = 0.25  # ties across images
        gt = torch.rand(8, 8, generator=generator) > 0.5
        metrics.update(pred, gt)
        preds.append(pred.flatten())
        gts.append(gt.flatten())
    exact = pairwise_auc(torch.cat(preds).double(), torch.cat(gts))
    assert metrics.compute()["pooled"]["auc"] == pytest.approx(exact, abs=1e-12)


def test_value_counts_merge_like_one_stream():
    generator = torch.Generator().manual_seed(2)
    first, second, both = ValueCounts(), ValueCounts(), ValueCounts()
    a, b = torch.randint(0, 9, (40,), generator=generator) / 8, torch.randint(0, 9, (30,), generator=generator) / 8
    first.add(a.numpy())
    second.add(b.numpy())
    both.add(torch.cat([a, b]).numpy())
    first += second
    both.compact()
    assert np.array_equal(first.values, both.values) and np.array_equal(first.counts, both.counts)
    assert pooled_roc_auc(first, ValueCounts()) is None


def test_ground_truth_rules_and_sizes():
    green = np.zeros((2, 2, 3), np.uint8)
    green[0, 0] = (0, 255, 0)
    green[1, :] = 255
    # IMDL-BenCo: channel mean 85 for pure green -> background; luminance 150/255 -> edited
    assert load_ground_truth(png(green)).tolist() == [[False, False], [True, True]]
    assert load_ground_truth(png(green), rule="luminance_alpha").tolist() == [[True, False], [True, True]]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[0, 0, 3] = 255  # white everywhere, opaque only at (0, 0)
    assert load_ground_truth(png(rgba, "RGBA")).all()
    assert load_ground_truth(png(rgba, "RGBA"), rule=mask_rule("magicbrush")).tolist() == [[True, False],
                                                                                          [False, False]]
    with pytest.raises(ValueError, match="resize=True"):
        load_ground_truth(png(green), size=(4, 4))
    assert load_ground_truth(png(green), size=(4, 4), resize=True)[2:].all()
    with pytest.raises(ValueError, match="mask rule"):
        load_ground_truth(png(green), rule="alpha")


# ---------------------------------------------------------------- IMDL-BenCo 0.1.45's own evaluators

def benco_cases():
    """(prediction, ground truth) pairs: untied random scores, partial, empty and tiny masks."""
    generator = torch.Generator().manual_seed(7)
    cases = []
    for index in range(12):
        pred = torch.rand(24, 20, generator=generator)
        gt = torch.zeros(24, 20, dtype=torch.bool)
        if index % 4 == 1:
            gt[3:15, 2:11] = True
        elif index % 4 == 2:
            gt = torch.rand(24, 20, generator=generator) > 0.8
        elif index % 4 == 3:
            gt[5, 5] = True
            pred = (pred + gt.float()).clamp(max=1) * 0.9  # mostly right
        cases.append((pred, gt))
    return cases


def test_equal_to_imdlbenco_evaluators_where_definitions_agree():
    modules = imdlbenco_evaluation()
    f1, iou, auc = modules["F1"].PixelF1(), modules["IOU"].PixelIOU(), modules["AUC"].PixelAUC()
    ours = PixelMetrics(averaging="benco")
    theirs = {"f1": [], "iou": [], "auc": []}
    for pred, gt in benco_cases():
        batch_pred, batch_gt = pred[None, None], gt.float()[None, None]
        theirs["f1"].append(float(f1.batch_update(batch_pred, batch_gt)[0]))
        theirs["iou"].append(float(iou.batch_update(batch_pred, batch_gt)[0]))
        theirs["auc"].append(float(auc.batch_update(batch_pred, batch_gt)[0]))
        scores = ours.update(pred, gt)
        assert scores["f1"] == pytest.approx(theirs["f1"][-1], abs=1e-6)
        assert scores["iou"] == pytest.approx(theirs["iou"][-1], abs=1e-6)
        assert scores["auc"] == pytest.approx(theirs["auc"][-1], abs=1e-5)  # no tied scores here
    result = ours.compute()
    for key in ("f1", "iou", "auc"):  # IMDL-BenCo averages over every image
        assert result["mean"][key] == pytest.approx(np.mean(theirs[key]), abs=1e-6)


def test_imdlbenco_auc_differs_only_on_ties():
    modules = imdlbenco_evaluation()
    gt = torch.zeros(1, 1, 4, 4)
    gt[..., :2, :] = 1
    constant = torch.full((1, 1, 4, 4), 0.5)
    theirs = float(modules["AUC"].PixelAUC().batch_update(constant, gt)[0])
    assert pixel_scores(constant[0, 0], gt[0, 0])["auc"] == pytest.approx(0.5)
    assert theirs != pytest.approx(0.5)  # its trapezoid over pixel order; documented in README
