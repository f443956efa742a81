"""Training-free edit-mask baselines, the yardsticks SIGMA is measured against.

- **Pixel differencing**: per pixel, the largest absolute channel difference between the original
  (resized to the edited image's size when they differ) and the edited image, in [0, 1].
- **Feature differencing**: the frozen backbone's patch tokens at each tap, LayerNormed (no affine,
  as the difference branch does), `(1 - cos(f_orig, f_edit)) / 2` per token averaged over the taps,
  upsampled bilinearly from the token grid to the edited image's size, in [0, 1].

Both soft maps are binarised by Otsu's threshold, floored (`mask = soft > max(otsu, floor)`): Otsu
always splits a map into two classes, so without the floor an identical pair (a map of zeros or of
float rounding noise) would get a mask. The floors are the smallest change that may count:
`PIXEL_FLOOR` is the level `sigma_fast.evaluate` calls a changed pixel; `FEATURE_FLOOR` is far above
float noise and far below a patch whose content changed.
"""
import numpy as np
import torch
import torch.nn.functional as F

from sigma_fast import ops
from sigma_fast.ops.reference import mask_score
from sigma_fast.grounding import parse_instruction
from sigma_fast.io.images import load_image

OTSU_BINS = 256
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
                                          size=image_size)
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


class BaselineAnnotator:
    """A baseline behind the `Annotator` interface that `evaluate_manifest` and
    `annotate_manifest` use: `soft_map(original, edited) -> float (H, W)`, binarised at
    `max(otsu, floor)`."""

    threshold = 0.5
    batch_size = 16

    def __init__(self, soft_map, floor):
        self.soft_map = soft_map
        self.floor = floor

    def annotate_images(self, originals, editeds, instructions, threshold=None):
        from sigma_fast.annotate import Annotation

        results = []
        for original, edited, instruction in zip(originals, editeds, instructions):
            soft = self.soft_map(original, edited)
            mask, level = binarize(soft, self.floor)
            prob = probability_at(soft, level)
            score = float(mask_score(torch.from_numpy(prob), torch.from_numpy(mask)))
            results.append(Annotation(mask.astype(np.uint8) * 255, prob, score, parse_instruction(instruction)))
        return results


def pixel_baseline():
    return BaselineAnnotator(pixel_difference, PIXEL_FLOOR)


def feature_baseline(backbone, image_size):
    return BaselineAnnotator(lambda original, edited: feature_difference(original, edited, backbone, image_size),
                             FEATURE_FLOOR)
