"""`sigma-fast eval`: pixel F1 / IoU / AUC of a checkpoint on a manifest with ground-truth masks.

Rows without a `mask` are skipped (reported as failures). Each pair is also classed as locally
pasted or fully regenerated (most pixels outside the GT mask changed): where an editor regenerates
every pixel, pixel-difference baselines are meaningless, so the summary reports both groups.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from sigma_fast.data.manifest import read_manifest
from sigma_fast.io.images import ImageLoadError, decode_image, load_mask
from sigma_fast.metrics import PixelMetrics

CHANGED_LEVEL = 8  # |original - edited| above this (0-255, any channel) counts as a changed pixel
REGENERATED_FRACTION = 0.5


def decode_pair(record):
    """Manifest records of file paths -> (record, original, edited) or (record, failed path, reason)."""
    decoded = []
    for path in (record.original, record.edited):
        try:
            decoded.append(decode_image(path))
        except ImageLoadError as error:
            return record, path, error.reason
    return (record, *decoded)


def split_decoded(decoded):
    """`decode_pair` results -> (ready (record, original, edited, ...) tuples, (record, path, reason) failures)."""
    ready = [item for item in decoded if not isinstance(item[1], str)]
    failures = [item for item in decoded if isinstance(item[1], str)]
    return ready, failures


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def changed_outside(original, edited, gt):
    """Fraction of pixels outside the GT edit region that changed (NaN when the sizes differ)."""
    if original.shape != edited.shape:
        return float("nan")
    changed = (original.int() - edited.int()).abs().amax(-1) > CHANGED_LEVEL
    outside = ~gt
    return float(changed[outside].float().mean()) if outside.any() else 0.0


def decode_with_mask(record):
    decoded = decode_pair(record)
    if isinstance(decoded[1], str):
        return decoded
    if not record.mask:
        return record, record.edited, "no ground-truth mask in this row"
    try:
        gt = load_mask(record.mask, size=tuple(decoded[2].pixels.shape[:2]))
    except ImageLoadError as error:
        return record, record.mask, error.reason
    return (*decoded, gt)


def evaluate_manifest(annotator, manifest, batch_size=16, workers=4, out_dir=None, limit=None, progress=True):
    """-> {"all": metrics, "local": metrics, "regenerated": metrics, "failures": [...]} where each
    metrics entry is `PixelMetrics.compute()` (mean over images and pooled)."""
    records, row_failures = read_manifest(manifest)
    records = records[:limit] if limit is not None else records
    groups = {name: PixelMetrics(threshold=annotator.threshold) for name in ("all", "local", "regenerated")}
    failures = [failure.__dict__ for failure in row_failures]
    rows = []
    bar = tqdm(total=len(records), unit="pair", desc="eval", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigma-decode") as decoder:
        for chunk in batches(records, batch_size):
            decoded = list(decoder.map(decode_with_mask, chunk))
            ready, failed = split_decoded(decoded)
            failures += [{"key": r.key, "path": path, "reason": reason} for r, path, reason in failed]
            if ready:
                annotations = annotator.annotate_images([item[1].pixels for item in ready],
                                                        [item[2].pixels for item in ready],
                                                        [item[0].instruction for item in ready])
                for (record, original, edited, gt), annotation in zip(ready, annotations):
                    outside = changed_outside(original.pixels, edited.pixels, gt)
                    group = "regenerated" if outside > REGENERATED_FRACTION else "local"
                    scores = groups["all"].update(annotation.prob, gt)
                    groups[group].update(annotation.prob, gt)
                    rows.append({"key": record.key, "changed_outside_gt": outside, "group": group,
                                 "score": annotation.score, **(scores or {"authentic": True})})
            bar.update(len(chunk))
    bar.close()
    summary = {name: metrics.compute() for name, metrics in groups.items()}
    summary["failures"] = failures
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "eval_pairs.jsonl"), "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        with open(os.path.join(out_dir, "eval_summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
    return summary
