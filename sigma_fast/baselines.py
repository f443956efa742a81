"""Training-free edit-mask baselines, the yardsticks SIGMA is measured against.

- **Pixel differencing**: per pixel, the largest absolute channel difference between the original
  (resized to the edited image's size when they differ) and the edited image, in [0, 1].
- **Feature differencing**: the frozen backbone's patch tokens at each tap, LayerNormed (no affine,
  as the difference branch does), `(1 - cos(f_orig, f_edit)) / 2` per token averaged over the taps,
  upsampled bilinearly from the token grid to the edited image's size, in [0, 1].

- **Grounding** (instruction only, what Grounded-SAM gives): the parsed edit's concepts grounded by
  Grounding DINO + SAM 2 on the images `sigma_fast.grounding.prior` names (no differencing), their
  union at the edited image's size; a global edit marks the whole image, nothing found marks nothing.

The pixel map is binarised by Otsu's threshold, floored (`mask = soft > max(otsu, floor)`): Otsu
always splits a map into two classes, so without the floor an identical pair (a map of zeros or of
float rounding noise) would get a mask. The floors are the smallest change that may count:
`PIXEL_FLOOR` is the level `sigma_fast.evaluate` calls a changed pixel; `FEATURE_FLOOR` is far above
float noise and far below a patch whose content changed. The feature map takes the same rule unless
given a fixed threshold; `sigma-fast eval` calibrates one on a dev split (`calibrate_threshold`).

`build_methods` puts SIGMA (flat and grounded prior) and the baselines behind one interface:
`annotate_images(originals, editeds, instructions) -> [Annotation]`, a `threshold` on `prob`, a `note`.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F

from sigma_fast import ops
from sigma_fast.ops.reference import mask_score
from sigma_fast.grounding import parse_instruction
from sigma_fast.io.images import load_image
from sigma_fast.metrics import scores_from_counts

METHODS = ("sigma", "sigma_grounded", "pixel", "feature", "grounding")
OTSU_BINS = 256
CALIBRATION_STEPS = 200  # candidate fixed thresholds k / CALIBRATION_STEPS
PIXEL_FLOOR = 8 / 255
FEATURE_FLOOR = 0.01
LAYER_NORM_EPS = 1e-6  # as the difference branch's LayerNorm


def as_uint8_tensor(image):
    """uint8 (H, W, 3) numpy array or tensor -> tensor (other inputs: `load_image`'s rules)."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image))
    return image if isinstance(image, torch.Tensor) else load_image(image)


def match_size(image, size):
    """uint8 (H, W, 3) -> float (3, h, w) in [0, 255] at `size` = (h, w), antialiased bilinear."""
    x = image.permute(2, 0, 1)[None].float()
    if tuple(image.shape[:2]) != tuple(size):
        x = F.interpolate(x, size, mode="bilinear", antialias=True, align_corners=False)
    return x[0]


def otsu_threshold(values, bins=OTSU_BINS):
    """Otsu's threshold of values in [0, 1] (histogram of `bins` bins): the bin edge maximising
    the between-class variance (the middle of a plateau of maxima). A map without two classes
    gets its maximum (nothing above it)."""
    values = torch.as_tensor(values).float().flatten().clamp(0, 1)
    histogram = torch.histc(values, bins, 0, 1).double()
    p = histogram / histogram.sum()
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    below = torch.cumsum(p, 0)
    mean_below = torch.cumsum(p * centres, 0)
    between = (mean_below[-1] * below - mean_below) ** 2 / (below * (1 - below))
    between = torch.nan_to_num(between, nan=0.0, posinf=0.0)
    best = between.max()
    if best <= 0:
        return float(values.max())
    # empty bins between the classes leave a plateau of maxima: cut in its middle, not at its start
    first = int(torch.argmax(between))
    lower = torch.nonzero(between[first:] < best * (1 - 1e-9))
    last = first + (int(lower[0]) - 1 if len(lower) else bins - 1 - first)
    return ((first + last) / 2 + 1) / bins


def binarize(soft, floor):
    """Soft map in [0, 1] -> (bool mask, threshold): `soft > max(otsu(soft), floor)`."""
    threshold = max(otsu_threshold(soft), floor)
    return np.asarray(soft) > threshold, threshold


def pixel_difference(original, edited):
    """uint8 pair -> float32 (H, W) in [0, 1] at the edited image's size: max |channel difference|."""
    edited = as_uint8_tensor(edited)
    original = match_size(as_uint8_tensor(original), edited.shape[:2])
    difference = (original - edited.permute(2, 0, 1).float()).abs().amax(0) / 255.0
    return difference.numpy().astype(np.float32)


def pixel_difference_mask(original, edited, floor=PIXEL_FLOOR):
    """uint8 pair -> bool (H, W) mask at the edited image's size (pixel differencing + Otsu)."""
    return binarize(pixel_difference(original, edited), floor)[0]


@torch.no_grad()
def feature_difference(original, edited, backbone, image_size):
    """uint8 pair -> float32 (H, W) in [0, 1] at the edited image's size: mean over the backbone's
    taps of (1 - cos) / 2 between the two images' LayerNormed patch tokens, upsampled.
    `backbone`: a `sigma_fast.model.DinoBackbone`; `image_size`: its input size."""
    edited = as_uint8_tensor(edited)
    device = next(backbone.parameters()).device
    x_orig, x_edit = ops.preprocess_pairs([as_uint8_tensor(original).to(device)], [edited.to(device)],
                                          size=image_size, dtype=next(backbone.parameters()).dtype)
    taps = backbone(torch.cat([x_orig, x_edit]))
    distances = []
    for tap in taps:
        tokens = F.layer_norm(tap.float(), tap.shape[-1:], eps=LAYER_NORM_EPS)
        distances.append((1 - F.cosine_similarity(tokens[0], tokens[1], dim=-1)) / 2)
    grid = image_size // backbone.patch_size
    distance = torch.stack(distances).mean(0).view(1, 1, grid, grid)
    soft = F.interpolate(distance, tuple(edited.shape[:2]), mode="bilinear", align_corners=False)
    return soft[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


def feature_difference_mask(original, edited, backbone, image_size, floor=FEATURE_FLOOR):
    """uint8 pair -> bool (H, W) mask at the edited image's size (feature differencing + Otsu)."""
    return binarize(feature_difference(original, edited, backbone, image_size), floor)[0]


def probability_at(soft, threshold):
    """Rescale a soft map monotonically (so per-image AUC is unchanged) such that `> 0.5` is
    exactly `soft > threshold`: the metrics' fixed 0.5 then scores the baseline's own mask."""
    soft = np.asarray(soft, dtype=np.float32)
    low = 0.5 * soft / max(threshold, 1e-8)
    high = 0.5 + 0.5 * (soft - threshold) / max(1.0 - threshold, 1e-8)
    return np.where(soft > threshold, np.maximum(high, np.nextafter(np.float32(0.5), np.float32(1))),
                    np.minimum(low, 0.5)).astype(np.float32)


def calibrate_threshold(scored, steps=CALIBRATION_STEPS):
    """(soft map, bool gt) pairs, any iterable -> the fixed threshold t = k / steps (k < steps) whose
    masks `soft > t` have the highest mean F1 over the pairs with a non-empty ground truth (the lowest
    such t on ties). ValueError without such a pair."""
    candidates = np.arange(steps) / steps
    total, pairs = np.zeros(steps), 0
    for soft, gt in scored:
        soft, gt = np.asarray(soft, dtype=np.float64), np.asarray(gt, dtype=bool)
        if not gt.any():
            continue
        positives, negatives = np.sort(soft[gt]), np.sort(soft[~gt])
        tp = len(positives) - np.searchsorted(positives, candidates, side="right")
        fp = len(negatives) - np.searchsorted(negatives, candidates, side="right")
        total += [scores_from_counts(int(a), int(b), len(positives) - int(a))["f1"] for a, b in zip(tp, fp)]
        pairs += 1
    if not pairs:
        raise ValueError("no dev pair with a non-empty ground-truth mask to calibrate a threshold on")
    return float(candidates[int(np.argmax(total))])


class BaselineAnnotator:
    """A baseline behind the `Annotator` interface that `evaluate` and `annotate_manifest` use:
    `soft_map(original, edited) -> float (H, W)`, binarised at `fixed` when given, else at
    `max(otsu, floor)`."""

    threshold = 0.5
    batch_size = 16

    def __init__(self, soft_map, floor, fixed=None):
        self.soft_map = soft_map
        self.floor = floor
        self.fixed = fixed

    @property
    def note(self):
        if self.fixed is not None:
            return f"mask = soft map > {self.fixed:g} (a fixed threshold)"
        return f"mask = soft map > max(Otsu's threshold, {self.floor:.4g}) per image"

    def calibrate(self, pairs):
        """Fix the threshold on dev pairs, an iterable of (original, edited, bool gt), streamed
        (`calibrate_threshold`); -> the threshold."""
        self.fixed = calibrate_threshold((self.soft_map(original, edited), gt) for original, edited, gt in pairs)
        return self.fixed

    def annotate_images(self, originals, editeds, instructions, threshold=None):
        from sigma_fast.annotate import Annotation

        results = []
        for original, edited, instruction in zip(originals, editeds, instructions):
            soft = self.soft_map(original, edited)
            if self.fixed is None:
                mask, level = binarize(soft, self.floor)
            else:
                mask, level = np.asarray(soft) > self.fixed, self.fixed
            prob = probability_at(soft, level)
            score = float(mask_score(torch.from_numpy(prob), torch.from_numpy(mask)))
            results.append(Annotation(mask.astype(np.uint8) * 255, prob, score, parse_instruction(instruction)))
        return results


def pixel_baseline():
    return BaselineAnnotator(pixel_difference, PIXEL_FLOOR)


def feature_baseline(backbone, image_size, threshold=None):
    """Feature differencing with `backbone`; `threshold` None = Otsu floored at FEATURE_FLOOR."""
    return BaselineAnnotator(lambda original, edited: feature_difference(original, edited, backbone, image_size),
                             FEATURE_FLOOR, threshold)


def ground_edit(grounder, original, edited, edit):
    """uint8 (H, W, 3) pair and its EditTuple -> bool (H, W) at the edited image's size: the union
    of the SAM 2 masks of the edit's concepts (`grounding_jobs`' images), all of it for a global
    edit, none of it when nothing is found."""
    from sigma_fast.grounding.prior import EDITED, grounding_jobs

    height, width = edited.shape[:2]
    if not all(e.is_local for e in edit.all_edits()):
        return torch.ones(height, width, dtype=torch.bool)
    jobs = [(edited if side == EDITED else original, concept) for side, concept in grounding_jobs(edit)]
    union = torch.zeros(height, width, dtype=torch.bool)
    for grounding in grounder._ground(jobs) if jobs else []:
        if grounding.mask is not None:
            union |= F.interpolate(grounding.mask[None, None].float(), (height, width), mode="nearest")[0, 0] > 0.5
    return union


class GroundingBaseline:
    """Instruction-only grounding (Grounding DINO + SAM 2 of the edited concept, no differencing)."""

    threshold = 0.5
    batch_size = 16
    note = "mask = Grounding DINO + SAM 2 masks of the parsed concepts (no differencing); prob is that mask"

    def __init__(self, grounder):
        self.grounder = grounder

    @torch.inference_mode()
    def annotate_images(self, originals, editeds, instructions, threshold=None):
        from sigma_fast.annotate import Annotation

        results = []
        for original, edited, instruction in zip(originals, editeds, instructions):
            edit = parse_instruction(instruction)
            mask = ground_edit(self.grounder, as_uint8_tensor(original), as_uint8_tensor(edited), edit)
            prob = mask.float()
            results.append(Annotation(mask.numpy().astype(np.uint8) * 255, prob.numpy(), float(mask_score(prob, mask)),
                                      edit))
        return results


def grounded(annotator, grounder):
    """A copy of a flat-prior `Annotator` sharing its model that grounds its prior with `grounder`."""
    twin = copy.copy(annotator)
    twin.prior_mode, twin._grounder = "grounded", grounder
    return twin


def build_methods(names, sigma, grounder=None, feature_threshold=None):
    """Method names (see METHODS) -> {name: annotator-like with `annotate_images` and `threshold`}.
    `sigma`: a loaded flat-prior `Annotator` (its backbone also serves the feature baseline);
    `grounder`: a `Grounder`, or a callable returning one, for grounding and sigma_grounded;
    `feature_threshold`: the feature baseline's fixed threshold (None: Otsu until `calibrate`d)."""
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or names}: expected some of {', '.join(METHODS)}")
    if sigma.prior_mode != "none":
        raise ValueError("the sigma method runs with the flat prior; ask for sigma_grounded for the grounded one")
    if callable(grounder) and any(name in ("grounding", "sigma_grounded") for name in names):
        grounder = grounder()
    methods = {}
    for name in dict.fromkeys(names):
        if name == "sigma":
            methods[name] = sigma
        elif name == "sigma_grounded":
            methods[name] = grounded(sigma, grounder)
        elif name == "pixel":
            methods[name] = pixel_baseline()
        elif name == "feature":
            methods[name] = feature_baseline(sigma.model.backbone, sigma.image_size, feature_threshold)
        else:
            methods[name] = GroundingBaseline(grounder)
    return methods


def method_note(method):
    """One line saying how a method's masks are made (for summaries and reports)."""
    if hasattr(method, "note"):
        return method.note
    prior = "grounded" if method.prior_mode == "grounded" else "flat"
    return f"SIGMA, {prior} prior; mask = prob > {method.threshold:g}"
