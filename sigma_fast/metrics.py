"""Pixel-level localisation metrics with IMDL-BenCo's definitions.

Per image: prediction `> threshold` (strict), P = TP/(TP+FP+1e-8), R = TP/(TP+FN+1e-8),
F1 = 2PR/(P+R+1e-8), IoU = TP/(TP+FP+FN+1e-8), AUC = pixel ROC AUC of the soft prediction (0.0 when
the ground truth has a single class). Images are averaged by the caller; by convention only
manipulated images (non-empty GT) are scored. `PixelMetrics` does both aggregations: the mean over
images and the pooled (dataset-level) figures from summed counts.
"""
import numpy as np
import torch

EPS = 1e-8
POOLED_AUC_BINS = 10000


def to_tensor(values):
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def as_probability(pred):
    """uint8 masks (0/255) scale to [0, 1]; floats are taken as probabilities."""
    pred = to_tensor(pred)
    return pred.float() / 255.0 if pred.dtype == torch.uint8 else pred.float()


def as_binary_gt(gt):
    """A ground-truth mask (0/255 uint8, 0/1, bool, or float) -> bool; uint8 binarised at > 127.5
    as IMDL-BenCo reads masks, other types at > 0.5."""
    gt = to_tensor(gt)
    if gt.dim() == 3:  # RGB read of a mask: channel mean, as IMDL-BenCo does
        gt = gt.float().mean(-1) if gt.shape[-1] in (3, 4) else gt.float().mean(0)
        return gt > 127.5
    if gt.dtype == torch.uint8:
        return gt > 127
    return gt.float() > 0.5


def roc_auc(scores, labels):
    """Exact ROC AUC (the Mann-Whitney statistic with ties counted half)."""
    scores, labels = scores.double().flatten(), labels.flatten()
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return 0.0
    order = torch.argsort(scores)
    # tied scores share the average of their ranks
    _, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    average_rank = torch.cumsum(counts, 0).double() - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[inverse]
    rank_sum = ranks[labels].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def confusion(pred, gt, threshold):
    positive = pred > threshold
    tp = int((positive & gt).sum())
    fp = int((positive & ~gt).sum())
    fn = int((~positive & gt).sum())
    return tp, fp, fn


def scores_from_counts(tp, fp, fn):
    precision = tp / (tp + fp + EPS)
    recall = tp / (tp + fn + EPS)
    return {"f1": 2 * precision * recall / (precision + recall + EPS), "iou": tp / (tp + fp + fn + EPS)}


def check_pair(pred, gt):
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in size")


def pixel_scores(pred, gt, threshold=0.5):
    """F1, IoU and AUC of one image's prediction (probabilities or a 0/255 mask) against its GT."""
    pred, gt = as_probability(pred), as_binary_gt(gt)
    check_pair(pred, gt)
    scores = scores_from_counts(*confusion(pred, gt, threshold))
    scores["auc"] = roc_auc(pred, gt)
    return scores


class PixelMetrics:
    """Accumulates per-image scores and pooled counts over a dataset.

    `update(pred, gt)` skips authentic images (empty GT) unless `include_authentic=True`.
    `compute()` returns `{"mean": {f1, iou, auc}, "pooled": {f1, iou, auc}, "images": n}`; the
    pooled AUC uses a histogram of POOLED_AUC_BINS probability bins.
    """

    def __init__(self, threshold=0.5, include_authentic=False):
        self.threshold = threshold
        self.include_authentic = include_authentic
        self.per_image = []
        self.tp = self.fp = self.fn = 0
        self.positive_hist = torch.zeros(POOLED_AUC_BINS, dtype=torch.float64)
        self.negative_hist = torch.zeros(POOLED_AUC_BINS, dtype=torch.float64)

    def update(self, pred, gt):
        pred, gt = as_probability(pred), as_binary_gt(gt)
        check_pair(pred, gt)
        if not gt.any() and not self.include_authentic:
            return None
        counts = confusion(pred, gt, self.threshold)
        scores = scores_from_counts(*counts)
        scores["auc"] = roc_auc(pred, gt)
        self.per_image.append(scores)
        self.tp, self.fp, self.fn = self.tp + counts[0], self.fp + counts[1], self.fn + counts[2]
        bins = (pred.clamp(0, 1) * (POOLED_AUC_BINS - 1)).round().long().flatten()
        self.positive_hist += torch.bincount(bins[gt.flatten()], minlength=POOLED_AUC_BINS).double()
        self.negative_hist += torch.bincount(bins[~gt.flatten()], minlength=POOLED_AUC_BINS).double()
        return scores

    def pooled_auc(self):
        positives, negatives = self.positive_hist.sum(), self.negative_hist.sum()
        if positives == 0 or negatives == 0:
            return 0.0
        # P(score_pos > score_neg) + 0.5 P(equal), bin by bin
        negatives_below = torch.cumsum(self.negative_hist, 0) - self.negative_hist
        wins = (self.positive_hist * (negatives_below + 0.5 * self.negative_hist)).sum()
        return float(wins / (positives * negatives))

    def compute(self):
        count = len(self.per_image)
        mean = {key: (sum(s[key] for s in self.per_image) / count if count else 0.0) for key in ("f1", "iou", "auc")}
        pooled = scores_from_counts(self.tp, self.fp, self.fn)
        pooled["auc"] = self.pooled_auc()
        return {"mean": mean, "pooled": pooled, "images": count}
