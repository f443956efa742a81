"""`sigma-fast eval`: pixel F1 / IoU / AUC of SIGMA and the baselines on a corpus with ground-truth masks.

Tables (per method, clean images): over all pairs, per benchmark (the record's `benchmark`, else its
reader's format), per action (the corpus's action hint, else the primary method's parsed action)
and per group: `local` (pixels outside the GT region mostly unchanged: the editor pasted its result)
or `regenerated` (more than REGENERATED_FRACTION of them changed: the editor re-synthesised the whole
image, where pixel differencing cannot work). `changed_outside_gt` is that fraction per pair.

Robustness (`jpeg_sweep`): the edited image re-encoded as JPEG at each of QUALITIES (PIL, its default
chroma subsampling), with `resize_sweep` also after a resize by each of SCALES; predictions are
resized back to the ground truth's size and scored against it. The original image is never degraded.

Rows without a mask are failures. A feature baseline without a fixed threshold is calibrated first
(`sigma_fast.baselines.calibrate_threshold`) on `dev`, else on a held-out DEV_FRACTION of the input
(by a hash of each key), which then counts in no method's table. See README, "Evaluation".
"""
import heapq
import io
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sigma_fast.baselines import method_note
from sigma_fast.io.corpora import RowFailure
from sigma_fast.io.decode import PairDecoder
from sigma_fast.io.images import ImageLoadError
from sigma_fast.metrics import PixelMetrics, check_averaging, load_ground_truth, mask_rule

CHANGED_LEVEL = 8  # |original - edited| above this (0-255, any channel) counts as a changed pixel
REGENERATED_FRACTION = 0.5
QUALITIES = (100, 95, 90, 80, 70, 60, 50)
SCALES = (0.75, 0.5)
DEV_FRACTION = 0.2
GALLERY = 6
GROUPS = ("local", "regenerated")
AVERAGING = {
    "skip_empty": "mean: of per-image scores over images with a non-empty ground truth (empty ones skipped); "
                  "pooled: from TP/FP/FN summed over those images; AUC: exact (Mann-Whitney), per image and pooled",
    "benco": "IMDL-BenCo's: every image counts, an empty ground truth scores F1 = IoU = AUC = 0; pooled from "
             "summed TP/FP/FN; AUC exact (Mann-Whitney), all-ones masks left out of the AUC mean",
}


@dataclass(frozen=True)
class Condition:
    name: str
    scale: float = 1.0
    quality: Optional[int] = None  # None: the edited image as it is


def conditions(jpeg_sweep=False, resize_sweep=False):
    """The clean condition, then the JPEG qualities, then (resize_sweep) each scale at each quality."""
    found = [Condition("clean")]
    if jpeg_sweep or resize_sweep:
        found += [Condition(f"jpeg{q}", 1.0, q) for q in QUALITIES]
    if resize_sweep:
        found += [Condition(f"resize{s:g}_jpeg{q}", s, q) for s in SCALES for q in QUALITIES]
    return found


def degrade(edited, condition):
    """uint8 (H, W, 3) tensor -> the same image resized by `condition.scale` (PIL bilinear, which
    antialiases when shrinking) and re-encoded as JPEG at `condition.quality`."""
    if condition.quality is None and condition.scale == 1.0:
        return edited
    image = Image.fromarray(edited.numpy())
    if condition.scale != 1.0:
        size = (max(1, round(image.width * condition.scale)), max(1, round(image.height * condition.scale)))
        image = image.resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=condition.quality)
    with Image.open(buffer) as decoded:
        return torch.from_numpy(np.asarray(decoded.convert("RGB")).copy())


def changed_outside(original, edited, gt):
    """Fraction of pixels outside the GT edit region that changed (NaN when the sizes differ)."""
    if original.shape != edited.shape:
        return float("nan")
    changed = (original.int() - edited.int()).abs().amax(-1) > CHANGED_LEVEL
    outside = ~gt
    return float(changed[outside].float().mean()) if outside.any() else 0.0


def dev_keys(corpus, fraction):
    """The held-out dev split: the round(fraction x n) keys (at least one) of the n rows with a mask
    that come first by a stable hash of the key, so the split does not depend on row order or run.
    Reads the corpus once without decoding."""
    if not 0 < fraction < 1:
        raise ValueError(f"the dev fraction must be in (0, 1), got {fraction}")
    keys = sorted((zlib.crc32(item.key.encode("utf-8")), item.key) for item in corpus
                  if not isinstance(item, RowFailure) and item.mask is not None)
    return {key for _, key in keys[:max(1, round(fraction * len(keys)))]}


def unscorable(record):
    """Why a row cannot be scored before anything is decoded, or None."""
    if record.original is None:  # CocoGlide, SID_Set, OpenSDI, IMDL-BenCo sets: one image per row
        return "single-image benchmark row: every method here compares an original with its edit"
    if record.mask is None:
        return "no ground-truth mask in this row"
    return None


def with_mask(record, decoded, resize_masks=False):
    """A PairRecord and its decoded (original, edited) uint8 tensors, or a reason -> (record, original,
    edited, gt bool (H, W)), or (record, reason). The mask is read by its corpus format's rule
    (`sigma_fast.metrics.mask_rule`); one of another size than the edited image is a failure unless
    `resize_masks`."""
    if isinstance(decoded, str):
        return record, decoded
    original, edited = decoded
    try:
        gt = load_ground_truth(record.mask, size=tuple(edited.shape[:2]), rule=mask_rule(record.meta.get("format")),
                               resize=resize_masks)
    except ImageLoadError as error:
        return record, f"mask: {error.reason}"
    except ValueError as error:
        return record, str(error)
    return record, original, edited, gt


def decoded_pairs(corpus, workers, keep=lambda record: True, failures=None, batch_size=16, resize_masks=False,
                  device="cpu"):
    """Batches of (record, original, edited, gt) of the corpus rows `keep` accepts, on the CPU; unreadable
    rows go to `failures` as {"key", "reason"} (when given). Images are decoded as annotate decodes
    them (`PairDecoder` on `device`: the same backend, so the same pixels and the same reasons)."""
    with PairDecoder(device, workers=workers) as decoder, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigma-mask") as masks:
        chunk = []
        for item in corpus:
            if isinstance(item, RowFailure):
                if failures is not None:
                    failures.append({"key": item.key, "source": item.source, "reason": item.reason})
                continue
            if keep(item):
                chunk.append(item)
            if len(chunk) == batch_size:
                yield _decode(decoder, masks, chunk, failures, resize_masks)
                chunk = []
        if chunk:
            yield _decode(decoder, masks, chunk, failures, resize_masks)


def _decode(decoder, masks, chunk, failures, resize_masks):
    reasons = [unscorable(record) for record in chunk]
    decoded = iter(decoder.decode([record for record, reason in zip(chunk, reasons) if reason is None]))
    # pixels come to the host here, on the thread whose stream the decoder made them ready on
    pairs = [reason or next(decoded) for reason in reasons]
    pairs = [pair if isinstance(pair, str) else tuple(image.pixels.cpu() for image in pair) for pair in pairs]
    ready = []
    for result in masks.map(lambda args: with_mask(*args, resize_masks), zip(chunk, pairs)):
        if len(result) == 2:
            if failures is not None:
                failures.append({"key": result[0].key, "reason": result[1]})
        else:
            ready.append(result)
    return ready


def at_size(prob, size):
    """float (h, w) probability map -> float32 tensor at `size` (bilinear, align_corners=False)."""
    prob = torch.as_tensor(np.asarray(prob, dtype=np.float32))
    if tuple(prob.shape) == tuple(size):
        return prob
    return F.interpolate(prob[None, None], tuple(size), mode="bilinear", align_corners=False)[0, 0]


class Tables:
    """PixelMetrics per method: `all`, per benchmark, per action, per group (clean images), and per
    robustness condition (all pairs)."""

    def __init__(self, methods, threshold_of, averaging):
        self.threshold_of = threshold_of
        self.averaging = averaging
        self.tables = {m: {"all": self._metrics(m), "benchmark": {}, "action": {},
                           "group": {g: self._metrics(m) for g in GROUPS}} for m in methods}
        self.robustness = {m: {} for m in methods}

    def _metrics(self, method):
        return PixelMetrics(threshold=self.threshold_of[method], averaging=self.averaging)

    def update(self, method, condition, prob, gt, pair):
        """Scores one prediction; -> its per-image scores, None for an empty ground truth."""
        robust = self.robustness[method].setdefault(condition.name, self._metrics(method))
        scores = robust.update(prob, gt)
        if condition.name == "clean":
            table = self.tables[method]
            for section in ("benchmark", "action"):
                table[section].setdefault(pair[section], self._metrics(method)).update(prob, gt)
            table["group"][pair["group"]].update(prob, gt)
            table["all"].update(prob, gt)
        return scores

    def compute(self, condition_list):
        tables = {m: {"all": t["all"].compute(),
                      **{s: {name: metrics.compute() for name, metrics in sorted(t[s].items())}
                         for s in ("benchmark", "action", "group")}}
                  for m, t in self.tables.items()}
        robustness = {m: {c.name: {"scale": c.scale, "quality": c.quality, **found[c.name].compute()}
                          for c in condition_list if c.name in found}
                      for m, found in self.robustness.items()}
        return tables, robustness


class Gallery:
    """The `size` best and worst pairs by the primary method's clean F1; an item is built (thumbnails)
    only when it enters one of the two heaps."""

    def __init__(self, size):
        self.size = size
        self.best, self.worst = [], []  # min-heaps of (f1, tie-break, item) and (-f1, tie-break, item)

    def offer(self, f1, index, build):
        item = None
        for heap, value, tie in ((self.best, f1, -index), (self.worst, -f1, index)):
            if self.size and (len(heap) < self.size or (value, tie) > heap[0][:2]):
                item = item or build()
                (heapq.heappush if len(heap) < self.size else heapq.heapreplace)(heap, (value, tie, item))

    def items(self):
        """-> (best first, worst first) lists of items."""
        return ([item for *_, item in sorted(self.best, key=lambda e: e[:2], reverse=True)],
                [item for *_, item in sorted(self.worst, key=lambda e: e[:2], reverse=True)])


def gallery_item(record, pair, original, edited, gt, results, primary):
    from sigma_fast.report import gallery_panels

    prior = None
    for annotation, _ in results.values():
        if annotation.prior is not None and not annotation.prior_flat:
            prior = annotation.prior
    return {"key": record.key, "instruction": record.instruction, "action": pair["action"],
            "benchmark": pair["benchmark"], "primary": primary,
            "f1": {method: scores["f1"] for method, (_, scores) in results.items() if scores},
            "panels": gallery_panels(original.numpy(), edited.numpy(), gt,
                                     {method: annotation.mask for method, (annotation, _) in results.items()},
                                     prior)}


def calibrate_feature(method, corpus, workers, held_out=None, fraction=None, resize_masks=False, device="cpu"):
    """Calibrate the feature baseline on `corpus` (only the keys in `held_out`, the set `dev_keys`
    drew with `fraction`, when given; decoded on `device`) -> the calibration entry of the summary."""
    keep = (lambda record: record.key in held_out) if held_out is not None else (lambda record: True)
    pairs = [0]

    def streamed():
        for batch in decoded_pairs(corpus, workers, keep, resize_masks=resize_masks, device=device):
            for _, original, edited, gt in batch:
                pairs[0] += 1
                yield original, edited, gt

    threshold = method.calibrate(streamed())
    source = (f"a held-out {fraction:g} of the input (by key hash; in no table)" if held_out is not None
              else f"{corpus.format} corpus {', '.join(corpus.sources)}")
    return {"method": "feature", "threshold": threshold, "dev_pairs": pairs[0], "dev_source": source,
            "rule": "the fixed threshold k/200 with the best mean F1 on the dev pairs"}


def evaluate(methods, corpus, out_dir=None, *, dev=None, dev_fraction=DEV_FRACTION, jpeg_sweep=False,
             resize_sweep=False, gallery=GALLERY, averaging="skip_empty", resize_masks=False, batch_size=16,
             workers=4, device=None, progress=True):
    """Scores `methods` ({name: annotator-like}, see `sigma_fast.baselines.build_methods`; the first
    is the primary one) on a `Corpus` with masks. `averaging`: see `sigma_fast.metrics`;
    `resize_masks`: resize a mask of another size than its edited image instead of skipping the pair;
    `device`: where images are decoded, with annotate's decoder (None: the primary method's device,
    the CPU for a baseline).
    With `out_dir`, writes eval_summary.json, eval_pairs.jsonl and report.html there.
    -> the summary dict (README, "Evaluation")."""
    if not methods:
        raise ValueError("no method to evaluate")
    check_averaging(averaging)
    primary = next(iter(methods))
    device = device or getattr(methods[primary], "device", "cpu")
    calibration, held_out = None, None
    feature = methods.get("feature")
    if feature is not None and feature.fixed is None:
        held_out = None if dev is not None else dev_keys(corpus, dev_fraction)
        calibration = calibrate_feature(feature, dev if dev is not None else corpus, workers, held_out, dev_fraction,
                                        resize_masks, device)
    condition_list = conditions(jpeg_sweep, resize_sweep)
    tables = Tables(methods, {name: method.threshold for name, method in methods.items()}, averaging)
    showcase = Gallery(gallery)
    failures, rows = [], []
    keep = (lambda record: record.key not in held_out) if held_out is not None else (lambda record: True)
    bar = tqdm(total=corpus.total(), unit="pair", desc="eval", disable=not progress)
    for batch in decoded_pairs(corpus, workers, keep, failures, batch_size, resize_masks, device):
        outside = [changed_outside(original, edited, gt) for _, original, edited, gt in batch]
        for condition in condition_list:
            editeds = [degrade(edited, condition) for _, _, edited, _ in batch]
            results = {name: method.annotate_images([item[1] for item in batch], editeds,
                                                    [item[0].instruction for item in batch])
                       for name, method in methods.items()}
            for position, (record, original, edited, gt) in enumerate(batch):
                pair = {"key": record.key, "benchmark": record.meta.get("benchmark") or record.meta.get("format")
                        or corpus.format,
                        "action": record.meta.get("action") or results[primary][position].edit.action,
                        "group": "regenerated" if outside[position] > REGENERATED_FRACTION else "local",
                        "changed_outside_gt": outside[position]}
                scored = {}
                for name in methods:
                    annotation = results[name][position]
                    scores = tables.update(name, condition, at_size(annotation.prob, gt.shape), gt, pair)
                    scored[name] = (annotation, scores)
                    rows.append({**pair, "method": name, "condition": condition.name, "score": annotation.score,
                                 **(scores or {"authentic": True})})
                if condition.name == "clean" and scored[primary][1]:
                    showcase.offer(scored[primary][1]["f1"], record.index,
                                   lambda: gallery_item(record, pair, original, edited, gt, scored, primary))
        bar.update(len(batch))
    bar.close()
    table_summary, robustness = tables.compute(condition_list)
    summary = {"methods": list(methods), "primary": primary,
               "notes": {name: method_note(method) for name, method in methods.items()},
               "averaging": averaging, "averaging_rule": AVERAGING[averaging], "calibration": calibration,
               "conditions": [c.name for c in condition_list], "tables": table_summary, "robustness": robustness,
               # the primary method's clean figures, at the top level as before
               "all": table_summary[primary]["all"], **table_summary[primary]["group"],
               "failures": failures}
    if out_dir:
        from sigma_fast.report import write_eval_report

        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "eval_pairs.jsonl"), "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        with open(os.path.join(out_dir, "eval_summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        write_eval_report(out_dir, summary, *showcase.items())
    return summary
