"""Validation: pixel F1 / IoU / AUC (IMDL-BenCo definitions, `sigma_fast.metrics`) on a held-out
split, at the model's input size, on manipulated images (non-empty masks) only."""
import torch

from sigma_fast.metrics import PixelMetrics


def evaluate(predict, batches, threshold=0.5, max_batches=None):
    """`predict(batch)` -> logits (b, 1, S, S) for a validation batch with `mask` (b, S, S).
    Returns this process's PixelMetrics (merge ranks with `merge_metrics`)."""
    metrics = PixelMetrics(threshold=threshold)
    for count, batch in enumerate(batches):
        if max_batches is not None and count >= max_batches:
            break
        if batch["mask"].shape[0] == 0:
            continue
        with torch.no_grad():
            prob = torch.sigmoid(predict(batch)[:, 0].float()).cpu()
        for index in range(prob.shape[0]):
            metrics.update(prob[index], batch["mask"][index] > 0.5)
    return metrics


def merge_metrics(parts, threshold=0.5):
    """One PixelMetrics from several ranks' (per-image scores and pooled counts add up)."""
    merged = PixelMetrics(threshold=threshold)
    for part in parts:
        merged.per_image.extend(part.per_image)
        merged.tp, merged.fp, merged.fn = merged.tp + part.tp, merged.fp + part.fp, merged.fn + part.fn
        merged.positive_hist += part.positive_hist
        merged.negative_hist += part.negative_hist
    return merged


def summary(metrics: PixelMetrics):
    """Flat dict for the logs: f1, iou, auc (means over images), pooled_f1, pooled_iou, images."""
    result = metrics.compute()
    return {"f1": result["mean"]["f1"], "iou": result["mean"]["iou"], "auc": result["mean"]["auc"],
            "pooled_f1": result["pooled"]["f1"], "pooled_iou": result["pooled"]["iou"], "images": result["images"]}
