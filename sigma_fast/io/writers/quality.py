"""Per-pair quality flags, filters and the run's `stats.json`.

`score` (from `sigma_fast.ops.reference.mask_score`): the model's confidence in its own mask, the
mean predicted probability inside the mask, or for an empty mask one minus the largest probability
(how sure it is that nothing changed). It is not a measured accuracy.

`regenerated`: the editor changed the whole image, not a region. Measured as the mean absolute
difference (0-255, over channels) between original and edited outside the predicted mask, on both
images area-downscaled to a GRID x GRID copy (cells touched by the mask are left out, so a mask
edge does not count). Above REGENERATED_LEVEL the pair is flagged. Measured: the demo pairs with
the demo model's masks give 0-2.0; synthetic local edits saved as JPEG (quality 75-95) 0.7-1.7 on
smooth images and under 5 on pure-noise texture (JPEG's worst case); a 15% brightness or colour
change 17-18, a 4-pixel shift 18, an unrelated image 68, hence 6. (An image resampled down and up
stays near 0.3: resampling alone is not regeneration.) When the mask leaves less than MIN_OUTSIDE
of the image outside it, the whole image is marked as changed: flagged, with no value.
"""
import re

import torch
import torch.nn.functional as F

GRID = 64
REGENERATED_LEVEL = 6.0
MIN_OUTSIDE = 0.02
SCORE_BINS = 10


def _grid(pixels):
    # (H, W, 3) uint8 on any device -> (3, GRID, GRID) float on the CPU, area average
    return F.adaptive_avg_pool2d(pixels.permute(2, 0, 1).float()[None], (GRID, GRID))[0].cpu()


def changed_outside(original, edited, mask):
    """uint8 (H, W, 3) tensors (sizes may differ) and the (H_e, W_e) uint8 mask -> mean |original -
    edited| outside the mask on the GRID copy, or None when (almost) everything is inside it."""
    inside = F.adaptive_max_pool2d(torch.as_tensor(mask).float()[None, None], (GRID, GRID))[0, 0] > 0
    outside = ~inside
    if outside.float().mean() < MIN_OUTSIDE:
        return None
    difference = (_grid(original) - _grid(edited)).abs().mean(0)
    return round(float(difference[outside].mean()), 4)


def is_regenerated(change):
    return change is None or change > REGENERATED_LEVEL


def filter_reason(score, regenerated, min_score=None, drop_regenerated=False):
    """Why a pair is left out of the dataset, or None to keep it."""
    if min_score is not None and score < min_score:
        return "min_score"
    if drop_regenerated and regenerated:
        return "regenerated"
    return None


def reason_category(reason):
    """The fixed head of a reason, without the file names and details after it."""
    return re.split(r"[(:'\"]| \d", reason, maxsplit=1)[0].strip() or reason


class RunStats:
    """stats.json, counted from the merged metadata and failure rows."""

    def __init__(self):
        self.rows = self.kept = self.regenerated = 0
        self.by_action, self.by_hint, self.filtered, self.by_reason = {}, {}, {}, {}
        self.histogram = [0] * SCORE_BINS
        self.failed = 0

    def add_row(self, row):
        self.rows += 1
        count(self.by_action, row["edit"].get("action") or "unknown")
        if row["meta"].get("action") is not None:
            count(self.by_hint, str(row["meta"]["action"]))
        self.histogram[min(int(row["score"] * SCORE_BINS), SCORE_BINS - 1)] += 1
        self.regenerated += bool(row["regenerated"])
        if row["filtered"]:
            count(self.filtered, row["filtered"])
        else:
            self.kept += 1

    def add_failure(self, failure):
        self.failed += 1
        count(self.by_reason, reason_category(failure["reason"]))

    def to_dict(self):
        return {
            "rows": self.rows + self.failed, "annotated": self.rows, "kept": self.kept,
            "filtered": sum(self.filtered.values()), "filtered_by": self.filtered, "failed": self.failed,
            "regenerated": self.regenerated, "by_action": self.by_action, "by_action_hint": self.by_hint,
            "by_skip_reason": self.by_reason,
            "score_histogram": {"edges": [round(i / SCORE_BINS, 3) for i in range(SCORE_BINS + 1)],
                                "counts": self.histogram},
            "regenerated_level": REGENERATED_LEVEL,
        }


def count(table, name):
    table[name] = table.get(name, 0) + 1
