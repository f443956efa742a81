"""An offline stand-in for the grounder (Grounding DINO + SAM 2) on the synthetic set: a simulated
detector that finds the instructed objects from the generator's record of them, with a real
detector's kinds of error, and the prior built from its masks exactly as the real one is.

    grounder = SimulatedGrounder(seed=0)
    result = grounder.priors(rows, grid=14)   # GroundingResult: prior (B, g, g), flat (B,), boxes
    write_priors("synth/heldout/manifest.jsonl", "priors/heldout", grid=14, grounder=grounder)

What it grounds is what the real grounder would (`sigma_fast.grounding.prior.grounding_jobs`): the
source on the original image, the target on the edited image, both for replace, the source on both
images for attribute_change; global edits are flat. The parse is the generator's own (action,
source, target): parser errors are not simulated.

Per concept (one draw, shared by its images, as a detector that misses an object on one image of a
near-identical pair tends to miss it on the other):
- miss, at `miss_rate`: the object gets no box.
Per (image, concept):
- box: the object's tight box, each edge moved by N(0, `jitter` x the box's side);
- mask (SAM-like): the object's outline (redrawn from its recorded shape, centre, radius and angle,
  never from the edit mask) carried along with the box, so the mask is as wrong as the box (a
  pessimistic choice: SAM often recovers an object from a loose box); at `partial_rate` only a
  part of it, cut by a random line (30-70% of its area), as when SAM segments one part of an object;
- distractor, at `distractor_rate` when the image holds a look-alike (another object of the same
  shape, or of the same colour when the phrase names the colour): that object's box and mask too.
  With a miss the distractor comes instead of the object, otherwise with it.
A pair is flat (all-ones prior, flagged) when none of its jobs found anything, as with the real one.
Side effects are never grounded (no instruction names them), so the prior misses them, as it should.

Default rates are choices, not measurements of Grounding DINO or SAM 2: 15% misses (the synthetic
phrases include nouns such as "crescent" or "hexagon" that are rare in detection training data, and
the objects are small: radius 7-18% of the image side), edge jitter of a tenth of the box side (a
loose but right box), a look-alike hit 20% of the times one is present (an open-vocabulary detector
also scores objects sharing the noun or the colour of the phrase), 10% partial masks. Vary them to
measure how the prior's errors matter.

Every draw comes from a stream seeded by (seed, sample key) and is made whether it is used or not, so
results do not depend on batch order, and raising one rate only adds errors of that kind to the
same pairs (common random numbers across rows of a sweep).
"""
import hashlib
from collections.abc import Mapping

import cv2
import numpy as np
import torch

from sigma_fast.data.manifest import read_manifest
from sigma_fast.data.synth_scene import shape_parts
from sigma_fast.grounding.prior import EDITED, ORIGINAL, Grounding, GroundingResult, assemble_priors

PARTIAL_SHARE = (0.3, 0.7)   # the share of the object a partial mask keeps
HIT_SCORE = (0.45, 0.9)      # score ranges of the boxes (above the grounder's 0.35 box threshold)
DISTRACTOR_SCORE = (0.36, 0.55)


class SimulatedGrounder:
    """A detector-plus-segmenter simulation over synthetic manifest rows; see the module doc.

    `miss_rate`: share of concepts not found; `jitter`: std of each box edge's offset as a share of
    the box's width or height; `distractor_rate`: share of (image, concept) jobs with a look-alike
    present that also hit it; `partial_rate`: share of found objects whose mask covers only part of
    them; `seed`: with the sample key, fixes every draw."""

    def __init__(self, miss_rate=0.15, jitter=0.1, distractor_rate=0.2, partial_rate=0.1, seed=0):
        for name, rate in (("miss_rate", miss_rate), ("distractor_rate", distractor_rate),
                           ("partial_rate", partial_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if not jitter >= 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.miss_rate, self.jitter = float(miss_rate), float(jitter)
        self.distractor_rate, self.partial_rate, self.seed = float(distractor_rate), float(partial_rate), int(seed)

    @property
    def settings(self):
        """JSON-safe description, recorded beside written priors."""
        return {"producer": "simulated_grounder", "miss_rate": self.miss_rate, "jitter": self.jitter,
                "distractor_rate": self.distractor_rate, "partial_rate": self.partial_rate, "seed": self.seed}

    def priors(self, samples, grid):
        """Synthetic manifest rows (dicts as `generate_dataset` writes them, or `PairRecord`s from
        `read_manifest`) -> GroundingResult: prior (B, grid, grid) float32 in [0, 1], flat (B,) bool,
        boxes per pair ({"concept", "image", "box" [x0, y0, x1, y1] px, "score", "hit": "target" or
        "distractor", "partial"})."""
        if not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}")
        groundings, boxes = [], []
        for sample in samples:
            pair_groundings, pair_boxes = self._ground(_row(sample))
            groundings.append(pair_groundings)
            boxes.append(pair_boxes)
        prior, flat = assemble_priors(groundings, grid)
        return GroundingResult(prior=prior, flat=flat, boxes=boxes)

    def _ground(self, row):
        key, meta = row["key"], row["meta"]
        size = meta["image_size"]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _key_number(key)]))
        jobs = _jobs(row)
        missed = {concept: rng.random() < self.miss_rate for concept in dict.fromkeys(c for _, c, _, _ in jobs)}
        groundings, boxes = [], []
        for side, concept, target, present in jobs:
            draws = _Draws(rng)  # drawn in full for every job: see the module doc
            hits = []
            if not missed[concept]:
                partial = draws.partial < self.partial_rate
                hits.append(self._detect(target, size, draws.jitter, draws.cut if partial else None,
                                         _between(HIT_SCORE, draws.score), "target"))
            lookalikes = [obj for obj in present if obj is not target and _alike(obj, target, concept)]
            if lookalikes and draws.distractor < self.distractor_rate:
                other = lookalikes[int(draws.pick * len(lookalikes))]
                hits.append(self._detect(other, size, draws.other_jitter, None,
                                         _between(DISTRACTOR_SCORE, draws.other_score), "distractor"))
            if not hits:
                groundings.append(Grounding((), None))
                continue
            mask = torch.from_numpy(np.logical_or.reduce([m for _, m in hits]))
            groundings.append(Grounding(tuple(tuple(b["box"]) + (b["score"],) for b, _ in hits), mask))
            boxes.extend({"concept": concept, "image": side, **b} for b, _ in hits)
        return groundings, boxes

    def _detect(self, obj, size, noise, cut, score, hit):
        """-> (box dict, (size, size) bool mask) for one found object."""
        outlines = _outlines(obj)
        x0, y0, x1, y1 = _tight_box(outlines)
        width, height = x1 - x0, y1 - y0
        jittered = np.array([x0, y0, x1, y1]) + noise * self.jitter * np.array([width, height, width, height])
        jittered = np.clip(jittered, 0, size)
        # keep at least a pixel of extent after clipping
        jittered[2:] = np.maximum(jittered[2:], np.minimum(jittered[:2] + 1, size))
        jittered[:2] = np.minimum(jittered[:2], jittered[2:] - 1)
        scale = (jittered[2:] - jittered[:2]) / np.maximum([width, height], 1e-6)
        moved = [((points - (x0, y0)) * scale + jittered[:2], value) for points, value in outlines]
        mask = _fill(moved, size)
        if not mask.any():  # a sliver of a box: the box itself is the evidence, as in the real grounder
            mask[int(jittered[1]):int(np.ceil(jittered[3])), int(jittered[0]):int(np.ceil(jittered[2]))] = True
        if cut is not None:
            mask = _part(mask, *cut)
        box = {"box": [round(float(v), 2) for v in jittered], "score": round(float(score), 4), "hit": hit,
               "partial": cut is not None}
        return box, mask


class _Draws:
    """The random numbers of one (image, concept) job, all drawn whatever the outcome."""

    def __init__(self, rng):
        self.jitter, self.other_jitter = rng.standard_normal(4), rng.standard_normal(4)
        self.partial, self.distractor, self.pick, self.score, self.other_score = rng.random(5)
        self.cut = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(*PARTIAL_SHARE)))


def _between(bounds, u):
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _key_number(key):
    # stable across processes (unlike hash()): the key's first 8 bytes of SHA-256
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")


def _row(sample):
    """A manifest row dict or PairRecord -> dict with key, action, source, target, meta."""
    if isinstance(sample, Mapping):
        row = dict(sample)
    elif hasattr(sample, "key") and hasattr(sample, "extra"):
        row = {"key": sample.key, **sample.extra}
    else:
        raise TypeError(f"samples must be manifest row dicts or PairRecords, got {type(sample).__name__}")
    meta = row.get("meta")
    if not isinstance(meta, Mapping) or "objects" not in meta or "image_size" not in meta or "key" not in row:
        raise ValueError(f"sample {row.get('key')!r} lacks a key or the generator's object record "
                         "(meta.objects, meta.image_size): regenerate it with this version of sigma_fast.data.synth")
    return row


def _same(a, b):
    return a["shape"] == b["shape"] and a["center"] == b["center"]


def _jobs(row):
    """-> [(image, concept, the object it names, the objects in that image)], in the order and with
    the pairing of `grounding_jobs` for the row's (action, source, target)."""
    action, source, target, meta = row["action"], row.get("source"), row.get("target"), row["meta"]
    if action not in ("add", "remove", "replace", "attribute_change"):
        return []
    obj, objects = meta["object"], meta["objects"]
    scene = [o for o in objects if not _same(o, obj)] + [obj]  # the recorded copy stands for the object
    if action == "add":
        return [(EDITED, target, obj, scene)]
    if action == "remove":
        return [(ORIGINAL, source, obj, scene)]
    if action == "replace":
        new = meta["new"]
        return [(ORIGINAL, source, obj, scene), (EDITED, target, new, scene[:-1] + [new])]
    return [(ORIGINAL, source, obj, scene), (EDITED, source, obj, scene)]


def _alike(obj, target, concept):
    """Whether a detector prompted with `concept` could take `obj` for `target`."""
    return obj["shape"] == target["shape"] or (obj["colour"] == target["colour"]
                                               and target["colour"] in concept.lower().split())


def _outlines(obj):
    """The object's outline(s) in pixels: [(points (N, 2) as (x, y), fill value)], as drawn."""
    angle, (cy, cx) = obj["angle"], obj["center"]
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return [(points @ rotation.T * obj["radius"] + (cx, cy), value) for points, value in shape_parts(obj["shape"])]


def _tight_box(outlines):
    filled = np.concatenate([points for points, value in outlines if value])
    return (*filled.min(0), *filled.max(0))


def _fill(outlines, size):
    canvas = np.zeros((size, size), np.uint8)
    for points, value in outlines:
        cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], int(value), lineType=cv2.LINE_8, shift=4)
    return canvas > 0


def _part(mask, angle, share):
    """The `share` of the mask's pixels on one side of a line across it at `angle`."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    along = xs * np.cos(angle) + ys * np.sin(angle)
    drop = along > np.quantile(along, share)
    part = mask.copy()
    part[ys[drop], xs[drop]] = False
    return part


def write_priors(manifest, out_dir, grid, grounder, batch_size=64):
    """Priors for every pair of a synthetic manifest split, written into a prior store
    (`sigma_fast.priors.PriorStore`, what training's `data.priors` reads) in `out_dir`; keys already
    in the store are kept. Returns the store."""
    from sigma_fast.priors import PriorStore

    records, failures = read_manifest(manifest)
    if failures:
        raise ValueError(f"{manifest}: {len(failures)} malformed row(s), first: {failures[0].reason}")
    store = PriorStore.create(out_dir, grid, grounder.settings)
    todo = [record for record in records if not store.has(record.key)]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        result = grounder.priors(chunk, grid)
        for record, prior, flat in zip(chunk, result.prior, result.flat):
            store.put(record.key, prior, bool(flat))
    return store
