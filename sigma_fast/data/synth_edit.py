"""The five synthetic edits, the optional side effect, and the rule that ties the mask to the pixels.

Mask rule: every edit yields a candidate image and a region. The region is where the edit's
coverage is > 0.5: the new object's (or its shadow's) alpha for `add`, the inpainted footprint for
`remove`, both for `replace`, the object's alpha for `attribute_change`, the whole image for
`global`, plus the side-effect blob's alpha. `finalize` takes the candidate inside the region and
the original bit for bit outside it; a region pixel the edit happened to leave identical gets its
lowest red bit flipped (a change of one level, invisible). So, before the global perturbation,
`(original != edited).any(-1) == (mask > 0)` exactly, and soft alphas feather only above 0.5.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from sigma_fast.data import synth_text as text
from sigma_fast.data.synth_scene import (COLOURS, SHAPES, compose, composite, contrasting_colour, mean_under,
                                         new_object, to_uint8)
from sigma_fast.data.synth_style import STYLES

PATTERNS = ("striped", "checkered", "polka-dotted")


@dataclass
class Edit:
    original: np.ndarray     # uint8 (H, W, 3)
    candidate: np.ndarray    # uint8 (H, W, 3): the edit at full strength; only `region` is kept
    region: np.ndarray       # bool (H, W)
    action: str
    source: Optional[str]
    target: Optional[str]
    instruction: str
    info: dict               # JSON-safe details for the sample's metadata


def _names(rng, obj, objects):
    # colour is needed to tell the object apart when another one has the same shape
    twin = any(o is not obj and o.shape == obj.shape for o in objects)
    return text.concept(rng, obj.shape, obj.colour, with_colour=twin or rng.random() < 0.6)


def _footprint(obj):
    # everything the object or its shadow visibly touches, grown a little for the inpainter and
    # without holes (a ring's middle), as a person drawing a removal mask would
    grow = 2 + obj.size // 128
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return binary_fill_holes(cv2.dilate(obj.footprint(0.02).astype(np.uint8), kernel) > 0)


def _inpaint(rng, image, region):
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    radius = int(rng.integers(3, 8))
    return cv2.inpaint(image, region.astype(np.uint8) * 255, radius, method)


def object_info(obj):
    """JSON-safe geometry of an object: enough to redraw its outline (`synth_grounder` does)."""
    return {"shape": obj.shape, "colour": obj.colour, "center": [round(float(c), 1) for c in obj.center],
            "radius": round(float(obj.radius), 1), "angle": round(float(obj.angle), 4)}


def edit_add(rng, scene):
    # the scene's last object is the one added: it was placed clear of the others
    obj, before = scene.objects[-1], dataclasses.replace(scene, objects=scene.objects[:-1])
    target = text.concept(rng, obj.shape, obj.colour, with_colour=rng.random() < 0.85)
    where = text.location(rng, obj.center, obj.size)
    return Edit(compose(before), compose(scene), obj.footprint(0.5), "add", None, target,
                text.add_text(rng, target, where), {"object": object_info(obj)})


def edit_remove(rng, scene):
    obj = scene.objects[rng.integers(len(scene.objects))]
    original, region = compose(scene), _footprint(obj)
    source = _names(rng, obj, scene.objects)
    instruction = text.remove_text(rng, source, text.location(rng, obj.center, obj.size))
    return Edit(original, _inpaint(rng, original, region), region, "remove", source, None, instruction,
                {"object": object_info(obj)})


def edit_replace(rng, scene):
    obj = scene.objects[rng.integers(len(scene.objects))]
    others = [o for o in scene.objects if o is not obj]
    shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
    new = new_object(rng, obj.size, scene.background, others, shape=shape, center=obj.center,
                     radius=obj.radius * rng.uniform(0.9, 1.12))
    if rng.random() < 0.4:
        new = dataclasses.replace(new, colour=obj.colour, rgb=obj.rgb)
    original, footprint = compose(scene), _footprint(obj)
    base = _inpaint(rng, original, footprint).astype(np.float32)
    candidate = to_uint8(composite(base, new, scene.noise))
    source = _names(rng, obj, scene.objects)
    target = text.concept(rng, new.shape, new.colour, with_colour=new.colour != obj.colour or rng.random() < 0.3)
    return Edit(original, candidate, footprint | new.footprint(0.5), "replace", source, target,
                text.replace_text(rng, source, target), {"object": object_info(obj), "new": object_info(new)})


def _changed_attribute(rng, obj):
    """-> (the object with one attribute changed, the attribute phrase, its kind)."""
    draw = rng.random()
    if draw < 0.6:
        colour = contrasting_colour(rng, obj.rgb, exclude={obj.colour})
        rgb = np.clip(np.add(COLOURS[colour], rng.integers(-12, 13, 3)), 0, 255).astype(np.float32)
        return dataclasses.replace(obj, colour=colour, rgb=rgb), colour, "colour"
    if draw < 0.85:
        pattern = str(rng.choice(PATTERNS))
        second = COLOURS[contrasting_colour(rng, obj.rgb, exclude={obj.colour})]
        return dataclasses.replace(obj, pattern=pattern, pattern_rgb=np.float32(second)), pattern, "pattern"
    darker = float(obj.rgb.mean()) > 110
    changed = dataclasses.replace(obj, brightness=0.5 if darker else 1.6)
    return changed, "darker" if darker else "brighter", "brightness"


def edit_attribute(rng, scene):
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    changed, attribute, kind = _changed_attribute(rng, obj)
    objects = list(scene.objects)
    objects[index] = changed
    source = _names(rng, obj, scene.objects)
    instruction = text.attribute_text(rng, source, attribute, is_colour=kind == "colour")
    return Edit(compose(scene), compose(dataclasses.replace(scene, objects=objects)), obj.alpha > 0.5,
                "attribute_change", source, attribute, instruction,
                {"object": object_info(obj), "attribute": kind})


def edit_global(rng, scene):
    style = str(rng.choice(list(STYLES)))
    original = compose(scene)
    return Edit(original, STYLES[style](original, rng), np.ones(original.shape[:2], bool), "global", None, None,
                text.global_text(rng, style), {"style": style})


EDITS = {"add": edit_add, "remove": edit_remove, "replace": edit_replace,
         "attribute_change": edit_attribute, "global": edit_global}


def _blob(rng, size, center, radius):
    """float32 (H, W) soft ellipse, about 1.5 px of feather."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, squash = rng.uniform(0, np.pi), rng.uniform(0.55, 1.0)
    dy, dx = yy - center[0], xx - center[1]
    a = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    b = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * squash)
    return np.clip((1 - np.sqrt(a * a + b * b)) * radius / 1.5 + 0.5, 0, 1)


def side_effect(rng, image, region):
    """An unintended small change away from `region`, as editors make: (candidate, blob region,
    info), or None when no spot is far enough from the edit."""
    size = image.shape[0]
    radius = rng.uniform(0.02, 0.045) * size
    distance = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 5)
    border = int(np.ceil(radius)) + 2
    distance[:border], distance[-border:], distance[:, :border], distance[:, -border:] = 0, 0, 0, 0
    ys, xs = np.nonzero(distance > radius + 0.04 * size)
    if len(ys) == 0:
        return None
    pick = rng.integers(len(ys))
    center = (float(ys[pick]), float(xs[pick]))
    alpha = _blob(rng, size, center, radius)[..., None]
    f = image.astype(np.float32)
    if rng.random() < 0.6:
        kind = "recolour"
        colour = COLOURS[contrasting_colour(rng, mean_under(f, center, radius))]
        changed = f * 0.35 + np.float32(colour) * 0.65
    else:
        kind = "brightness"
        changed = f + (50 if mean_under(f, center, radius).mean() < 128 else -50)
    blob = alpha[..., 0] > 0.5
    ys, xs = np.nonzero(blob)
    info = {"kind": kind, "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]}
    return to_uint8(f * (1 - alpha) + changed * alpha), blob, info


def finalize(original, candidate, region):
    """-> (edited, mask): the candidate on the region, the original elsewhere (see module doc)."""
    edited = np.where(region[..., None], candidate, original)
    same = region & (edited == original).all(-1)
    edited[same, 0] ^= 1
    return edited, region.astype(np.uint8) * 255
