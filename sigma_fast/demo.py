"""`sigma-fast demo`: annotate the sample pairs shipped in the package with the embedded demo
model, into an IMDL-BenCo dataset plus `report.html`.

The embedded model is a toy: a tiny randomly initialised backbone and text tower with a SIGMA head
trained by this package on synthetic edits (`sigma_fast.data.synth`; built by
`scripts/build_demo.py`). It shows the pipeline end to end with no download; it is not a model
for real photographs. For real corpora, train on MagicBrush with the DINOv2-B config.
"""
import functools
import json
import os
import shutil

import numpy as np
from PIL import Image

from sigma_fast.io.images import load_image
from sigma_fast.metrics import load_ground_truth, mask_rule, pixel_scores
from sigma_fast.pipeline import annotate_manifest
from sigma_fast.report import write_report

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
DEMO_PAIRS = os.path.join(ASSETS, "demo_pairs")
MANIFEST = "pairs.jsonl"


def copy_samples(out_dir):
    """Copy the shipped sample pairs into `out_dir/inputs` so the dataset stands on its own."""
    if not os.path.isfile(os.path.join(DEMO_PAIRS, MANIFEST)):
        raise FileNotFoundError(f"the demo's sample pairs are missing from {DEMO_PAIRS}; reinstall sigma_fast")
    inputs = os.path.join(out_dir, "inputs")
    shutil.copytree(DEMO_PAIRS, inputs, dirs_exist_ok=True)
    return os.path.join(inputs, MANIFEST)


def ground_truth(meta, shape):
    """bool (H, W) ground truth at `shape` of a row whose input had a mask (read by its format's rule), else None."""
    path = meta.get("mask_path")
    if not path:
        return None
    return load_ground_truth(path, size=shape, rule=mask_rule(meta.get("format")), resize=True)


def report_items(out_dir):
    """The report's items; the ground truth and the mask's F1 where the input row had a mask (F1 only
    when that mask is not empty), no prior where it was flat."""
    items = []
    with open(os.path.join(out_dir, "metadata.jsonl")) as handle:
        for row in map(json.loads, handle):
            if row["mask"] is None:  # filtered out of the dataset
                continue
            path = functools.partial(os.path.join, out_dir)  # metadata paths are relative to the output folder
            mask = np.asarray(Image.open(path(row["mask"])))
            gt = ground_truth(row.get("meta") or {}, mask.shape)
            items.append({
                "key": row["key"], "instruction": row["instruction"], "edit": row["edit"], "score": row["score"],
                "original": load_image(path(row["original"])).numpy(), "edited": load_image(path(row["image"])).numpy(),
                "mask": mask, "gt": gt,
                "f1": pixel_scores(mask, gt)["f1"] if gt is not None and gt.any() else None,
                "prior": np.asarray(Image.open(path(row["prior"])), dtype=np.float32) / 255
                if row["prior"] and not row.get("prior_flat") else None,
            })
    return items


def run_demo(annotator, out_dir, progress=True):
    """-> (dataset.json path, report.html path, RunSummary)."""
    manifest = copy_samples(out_dir)
    summary = annotate_manifest(annotator, manifest, out_dir, progress=progress)
    page = write_report(out_dir, report_items(out_dir), title="sigma_fast demo (toy model, synthetic edits)")
    return os.path.join(summary.out_dir, "dataset.json"), page, summary
