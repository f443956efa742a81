"""The grounded spatial prior: which grid cells an edit is expected to touch.

Which concept is grounded on which image, per action:
- remove: the source on the original image (the object that disappears);
- add: the target on the edited image (the object that appears);
- replace: the source on the original and the target on the edited image;
- attribute_change: the source on the original *and on the edited image*. The target is an attribute
  phrase ("red", "smiling") that a detector cannot ground on its own, and the changed object may have
  moved or changed shape, so its new extent is found by its name in the edited image.
The prior of a pair is the union of the masks of all its edits (its tuple and `extra`), each resized to
grid x grid as area coverage (both images are squashed to a square before the backbone, so cells match
in normalised coordinates), dilated by one cell (one patch), in [0, 1]. A pair is flat (all ones, and
flagged) when any of its edits is global or unknown, or when nothing was found above threshold.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

ORIGINAL = "original"
EDITED = "edited"


@dataclass
class GroundingResult:
    """`prior` (B, grid, grid) float32 in [0, 1]; `flat` (B,) bool, True where the prior is all ones
    because nothing could be grounded; `boxes` per pair, a list of JSON-serialisable dicts
    {"concept", "image" ("original" or "edited"), "box" [x0, y0, x1, y1] in pixels, "score"}."""

    prior: torch.Tensor
    flat: torch.Tensor
    boxes: List[List[dict]]


@dataclass(frozen=True)
class Grounding:
    """What the detector and segmenter found for one concept on one image: `boxes` as
    (x0, y0, x1, y1, score) in pixels, `mask` (H, W) bool, None when nothing was found."""

    boxes: Tuple[Tuple[float, float, float, float, float], ...]
    mask: Optional[torch.Tensor]


def flat_prior(batch, grid, device=None):
    """The prior of edits with nothing to ground: ones, (batch, grid, grid) float32."""
    return torch.ones(batch, grid, grid, dtype=torch.float32, device=device)


def grounding_jobs(edit):
    """The (image, concept) pairs to ground for an edit and its extra edits, in order and without
    repeats; empty when the pair's prior is flat (an edit is global or unknown)."""
    edits = edit.all_edits()
    if any(not e.is_local for e in edits):
        return []
    jobs = []
    for e in edits:
        if e.action in ("remove", "replace", "attribute_change"):
            jobs.append((ORIGINAL, e.source))
        if e.action in ("add", "replace"):
            jobs.append((EDITED, e.target))
        if e.action == "attribute_change":
            jobs.append((EDITED, e.source))
    return list(dict.fromkeys(job for job in jobs if job[1]))


def prior_from_masks(masks, grid):
    """Union of (H_i, W_i) bool masks (sizes may differ: original and edited image) -> (grid, grid)
    float32 in [0, 1]: each mask's area coverage of the cells, max over masks, dilated by one cell.
    None when there is no mask."""
    masks = [mask for mask in masks if mask is not None]
    if not masks:
        return None
    coverage = torch.stack([
        F.interpolate(mask[None, None].float(), size=(grid, grid), mode="area")[0, 0] for mask in masks
    ]).amax(0)  # (grid, grid)
    # One cell of dilation: a patch next to the object sees it through its receptive field.
    dilated = F.max_pool2d(coverage[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    return dilated.clamp_(0, 1)


def assemble_priors(groundings, grid, device=None):
    """Per pair, the list of its Groundings (empty for a flat pair) -> (prior (B, grid, grid),
    flat (B,) bool)."""
    priors, flat = [], []
    for pair in groundings:
        prior = prior_from_masks([g.mask for g in pair], grid)
        flat.append(prior is None)
        priors.append(torch.ones(grid, grid) if prior is None else prior.cpu())
    if not priors:
        return torch.ones(0, grid, grid, device=device), torch.zeros(0, dtype=torch.bool, device=device)
    return torch.stack(priors).to(device), torch.tensor(flat, dtype=torch.bool, device=device)
