"""Pixel-level localisation metrics with IMDL-BenCo's definitions, and where ours differ, a stated option.

Per image: prediction `> threshold` (strict), P = TP/(TP+FP+1e-8), R = TP/(TP+FN+1e-8),
F1 = 2PR/(P+R+1e-8), IoU = TP/(TP+FP+FN+1e-8) (IMDL-BenCo's, to the last digit).
AUC = the exact Mann-Whitney ROC AUC of the soft prediction (ties count half, = sklearn's
`roc_auc_score`); None when the ground truth has one class. IMDL-BenCo's own per-image AUC ranks tied
scores in pixel order and is NaN for an all-ones mask; it is equal to ours when no scores tie.

Averaging (`averaging=`, named in every summary):
  "skip_empty": images with an empty ground truth (authentic) are left out of the mean and the pooled
                figures; the mean AUC is over images with a defined AUC.
  "benco":      IMDL-BenCo's: every image counts, an empty ground truth scores F1 = IoU = AUC = 0;
                images with an all-ones mask (AUC undefined; NaN in IMDL-BenCo) are left out of the AUC mean.
Pooled figures come from summed TP/FP/FN and the exact AUC of every scored pixel at once (counts per
distinct score value: memory grows with the distinct values, not the pixels).

Ground-truth masks (`load_ground_truth`): by default read as IMDL-BenCo does (RGB, channel mean > 127.5),
or by a benchmark's own rule (`BENCHMARK_MASK_RULES`, e.g. MagicBrush's RGBA masks: luminance x alpha);
a mask of another size than the image is refused unless `resize=True`.
"""
import io
import os

import numpy as np
import torch
from PIL import Image

from sigma_fast.io.images import ImageLoadError, mask_values

EPS = 1e-8
AVERAGING = ("skip_empty", "benco")
MASK_RULES = ("benco", "luminance_alpha")
BENCHMARK_MASK_RULES = {"magicbrush": "luminance_alpha"}  # corpus format -> rule; others read as IMDL-BenCo
COMPACT_VALUES = 1 << 22  # pending score values merged into the distinct-value counts past this many


def mask_rule(format):
    """The ground-truth rule of a corpus format (`open_corpus`'s names): 'benco' unless it needs another."""
    return BENCHMARK_MASK_RULES.get(format, "benco")


def _mask_image(source):
    # a path, encoded bytes or PIL image -> a loaded PIL image
    if isinstance(source, Image.Image):
        return source
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
    try:
        image = Image.open(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview))
                           else os.fspath(source))
        image.load()
    except FileNotFoundError:
        raise ImageLoadError(name, "file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(name, f"corrupt or unreadable mask ({error})") from error
    return image


def load_ground_truth(source, size=None, rule="benco", resize=False) -> torch.Tensor:
    """A ground-truth mask (path, bytes or PIL image) -> bool (H, W), True where manipulated.
    rule "benco": PIL `.convert("RGB")`, channel mean > 127.5 (IMDL-BenCo; alpha ignored);
    rule "luminance_alpha": luminance x alpha > 0.5 (`sigma_fast.io.images.mask_values`).
    `size` (H, W) is the image's: another size is a ValueError unless `resize=True` (then the values
    are resized, antialiased bilinear, before the threshold)."""
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {rule!r}: expected one of {', '.join(MASK_RULES)}")
    image = _mask_image(source)
    if rule == "benco":
        values = np.asarray(image.convert("RGB"), dtype=np.float32).mean(-1) / 255.0
        cut = 127.5 / 255.0
    else:
        values, cut = mask_values(image), 0.5
    values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if size is not None and tuple(values.shape) != tuple(size):
        if not resize:
            raise ValueError(f"ground-truth mask {tuple(values.shape)} differs from the image {tuple(size)} "
                             "(H, W): pass resize=True to resize it")
        values = torch.nn.functional.interpolate(values[None, None], size=tuple(size), mode="bilinear",
                                                 antialias=True, align_corners=False)[0, 0]
    return values > cut


def to_tensor(values):
    if isinstance(values, torch.Tensor):
        return values
    values = np.asarray(values)
    # read-only arrays (PIL's buffers) are copied: torch warns on, and may write to, non-writable memory
    return torch.from_numpy(values if values.flags.writeable else values.copy())


def as_probability(pred):
    """uint8 masks (0/255) scale to [0, 1]; floats are taken as probabilities."""
    pred = to_tensor(pred)
    return pred.float() / 255.0 if pred.dtype == torch.uint8 else pred.float()


def as_binary_gt(gt):
    """An already decoded ground truth -> bool: (H, W, 3|4) or (3, H, W) at channel mean > 127.5 (as
    IMDL-BenCo), uint8 (H, W) at > 127.5, bool as is, other types at > 0.5."""
    gt = to_tensor(gt)
    if gt.dim() == 3:
        gt = gt.float().mean(-1) if gt.shape[-1] in (3, 4) else gt.float().mean(0)
        return gt > 127.5
    if gt.dtype == torch.uint8:
        return gt > 127
    return gt.float() > 0.5


def roc_auc(scores, labels):
    """Exact ROC AUC (the Mann-Whitney statistic, tied scores at their average rank), or None when
    the labels hold one class."""
    scores, labels = scores.double().flatten(), labels.flatten().bool()
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return None
    order = torch.argsort(scores)
    _, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    average_rank = torch.cumsum(counts, 0).double() - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[inverse]
    rank_sum = ranks[labels].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class ValueCounts:
    """How many times each distinct score value was seen (exact; float64 counts are exact below 2**53).
    New values wait in a list and are merged with np.unique once COMPACT_VALUES are pending."""

    def __init__(self):
        self.values = np.zeros(0, np.float64)
        self.counts = np.zeros(0, np.float64)
        self._pending = []
        self._pending_size = 0

    def add(self, scores):
        scores = np.asarray(scores, np.float64).ravel()
        if scores.size:
            values, counts = np.unique(scores, return_counts=True)
            self._pending.append((values, counts.astype(np.float64)))
            self._pending_size += values.size
            if self._pending_size >= COMPACT_VALUES:
                self.compact()

    def compact(self):
        if self._pending:
            values = np.concatenate([self.values] + [v for v, _ in self._pending])
            counts = np.concatenate([self.counts] + [c for _, c in self._pending])
            self.values, inverse = np.unique(values, return_inverse=True)
            self.counts = np.bincount(inverse.ravel(), weights=counts, minlength=self.values.size)
            self._pending, self._pending_size = [], 0
        return self

    def total(self):
        return float(self.compact().counts.sum())

    def __iadd__(self, other):
        other.compact()
        self._pending.append((other.values, other.counts))
        self._pending_size += other.values.size
        return self.compact()


def pooled_roc_auc(positive: ValueCounts, negative: ValueCounts):
    """Exact AUC of all counted scores: P(pos > neg) + P(pos = neg) / 2; None when a class is absent."""
    positive, negative = positive.compact(), negative.compact()
    n_pos, n_neg = positive.counts.sum(), negative.counts.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(negative.counts)])  # negatives below each distinct value
    left = np.searchsorted(negative.values, positive.values, side="left")
    right = np.searchsorted(negative.values, positive.values, side="right")
    ties = below[right] - below[left]
    wins = np.sum(positive.counts * (below[left] + 0.5 * ties))
    return float(wins / n_pos / n_neg)


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
    """F1, IoU and AUC (None for a one-class ground truth) of one image's prediction (probabilities or
    a 0/255 mask) against its ground truth."""
    pred, gt = as_probability(pred), as_binary_gt(gt)
    check_pair(pred, gt)
    scores = scores_from_counts(*confusion(pred, gt, threshold))
    scores["auc"] = roc_auc(pred, gt)
    return scores


def check_averaging(averaging):
    if averaging not in AVERAGING:
        raise ValueError(f"unknown averaging {averaging!r}: expected one of {', '.join(AVERAGING)}")
    return averaging


class PixelMetrics:
    """Accumulates per-image scores and pooled counts over a dataset under one averaging convention.

    `update(pred, gt)` -> the image's scores, or None when it is skipped (empty GT, "skip_empty").
    `compute()` -> {"averaging", "images", "empty_gt", "auc_images", "mean": {f1, iou, auc},
    "pooled": {f1, iou, auc}}; an AUC with nothing to average is None.
    `positive_hist` / `negative_hist` count scored pixels per distinct score value (they add with `+=`).
    """

    def __init__(self, threshold=0.5, averaging="skip_empty"):
        self.threshold = threshold
        self.averaging = check_averaging(averaging)
        self.per_image = []
        self.empty_gt = 0
        self.tp = self.fp = self.fn = 0
        self.positive_hist = ValueCounts()
        self.negative_hist = ValueCounts()

    def update(self, pred, gt):
        pred, gt = as_probability(pred), as_binary_gt(gt)
        check_pair(pred, gt)
        empty = not bool(gt.any())
        self.empty_gt += empty
        if empty and self.averaging == "skip_empty":
            return None
        counts = confusion(pred, gt, self.threshold)
        scores = scores_from_counts(*counts)
        scores["auc"] = 0.0 if empty else roc_auc(pred, gt)  # IMDL-BenCo scores an empty GT's AUC 0
        self.per_image.append(scores)
        self.tp, self.fp, self.fn = self.tp + counts[0], self.fp + counts[1], self.fn + counts[2]
        flat, labels = pred.flatten().double().numpy(), gt.flatten().numpy()
        self.positive_hist.add(flat[labels])
        self.negative_hist.add(flat[~labels])
        return scores

    def compute(self):
        count = len(self.per_image)
        aucs = [scores["auc"] for scores in self.per_image if scores["auc"] is not None]
        mean = {key: (sum(s[key] for s in self.per_image) / count if count else 0.0) for key in ("f1", "iou")}
        mean["auc"] = sum(aucs) / len(aucs) if aucs else None
        pooled = scores_from_counts(self.tp, self.fp, self.fn)
        pooled["auc"] = pooled_roc_auc(self.positive_hist, self.negative_hist)
        return {"averaging": self.averaging, "images": count, "empty_gt": self.empty_gt,
                "auc_images": len(aucs), "mean": mean, "pooled": pooled}
