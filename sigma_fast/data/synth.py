"""A deterministic, seeded generator of (original, edited, instruction, mask) tuples: the offline
proxy benchmark for training and evaluating edit-mask annotators.

    from sigma_fast.data.synth import SynthConfig, generate_pair, generate_dataset
    pair = generate_pair(7, SynthConfig())
    generate_dataset("synth/", count=1000, seed=0, config=SynthConfig())

A pair is made in four steps:
1. a scene: a procedural background (gradients, value noise, stripes, a horizon, tinted CC0
   textures) or a crop of a shipped photograph, with 1-4 shaded, shadowed, antialiased objects
   and sensor noise (`synth_scene`);
2. one edit of the five actions with its instruction and parsed (action, source, target): `add`
   pastes an object with soft alpha, `remove` inpaints (OpenCV), `replace` inpaints and pastes a
   new shape, `attribute_change` recolours, patterns or re-lights an object, `global` restyles the
   whole image (`synth_edit`, `synth_style`, `synth_text`);
3. optionally a side effect: a small blob recoloured or re-lit away from the instructed region,
   included in the mask and flagged;
4. optionally an editor-like perturbation of the whole image (a learned autoencoder round trip,
   resampling, JPEG), *not* in the mask, as with a real editor (`synth_perturb`).

The mask rule (exact; see `synth_edit`): before step 4, `(original != edited).any(-1)` equals
`mask > 0` pixel for pixel; the region of an edit is where its coverage is > 0.5 (whole image for
`global`). `SynthConfig(keep_clean=True)` puts that pre-perturbation image in `meta["edited_clean"]`.
`meta["objects"]` (every object's shape, colour, centre, radius, angle) and `meta["image_size"]`
let `synth_grounder` simulate a detector on the pair without reading its mask.

Determinism: the same seed and config give byte-identical outputs on a machine (the autoencoder
weights come from the on-disk cache; it trains and runs on one thread, so torch's thread setting
does not matter). With `use_photos` on, outputs also depend on whether scikit-image is installed.

Shipped photographs and textures (read from scikit-image's `skimage/data` folder, never
downloaded; licences as scikit-image's `skimage.data` docstrings state them):
astronaut: public domain (NASA Great Images); camera: CC0 (Lav Varshney); chelsea: CC0 (Stefan
van der Walt); coffee: CC0 (Rachel Michetti); hubble_deep_field: public domain (NASA); rocket:
public domain (SpaceX); textures brick, grass, gravel: CC0 (CC0Textures). Without scikit-image the
generator uses procedural scenes only.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from sigma_fast.data.synth_edit import EDITS, finalize, object_info, side_effect
from sigma_fast.data.synth_perturb import AutoencoderSettings, load_autoencoder, perturb
from sigma_fast.data.synth_scene import make_scene
from sigma_fast.grounding.edit import ACTIONS

DEFAULT_ACTIONS = {"add": 0.2, "remove": 0.2, "replace": 0.2, "attribute_change": 0.25, "global": 0.15}


@dataclass
class SynthConfig:
    image_size: int = 256
    perturb_prob: float = 0.7          # chance of the editor-like whole-image perturbation
    side_effect_prob: float = 0.3      # chance of an unintended change (local actions only)
    action_weights: dict = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    jpeg_quality: tuple = (60, 95)     # inclusive range drawn from when perturbing
    use_photos: bool = True            # scikit-image's photographs and textures, when installed
    photo_prob: float = 0.3
    autoencoder: bool = True           # the autoencoder round trip in the perturbation
    autoencoder_settings: AutoencoderSettings = field(default_factory=AutoencoderSettings)
    cache_dir: Optional[str] = None    # where the trained autoencoder is kept (~/.cache/sigma_fast)
    keep_clean: bool = False           # put the pre-perturbation edited image in meta["edited_clean"]

    def __post_init__(self):
        unknown = set(self.action_weights) - set(ACTIONS)
        if unknown or not any(w > 0 for w in self.action_weights.values()):
            raise ValueError(f"action_weights needs positive weights over {ACTIONS}, got {self.action_weights}")
        if self.image_size < 64 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 64, got {self.image_size}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality must be a range within 1..100, got {self.jpeg_quality}")


@dataclass
class SynthPair:
    original: np.ndarray     # uint8 (H, W, 3)
    edited: np.ndarray       # uint8 (H, W, 3)
    mask: np.ndarray         # uint8 (H, W), {0, 255}: the edit and any side effect
    instruction: str
    action: str
    source: Optional[str]
    target: Optional[str]
    perturbed: bool
    side_effect: bool
    meta: dict


def _action(rng, weights):
    names = [a for a in ACTIONS if weights.get(a, 0) > 0]
    p = np.array([weights[a] for a in names], np.float64)
    return names[rng.choice(len(names), p=p / p.sum())]


def _make_pair(seed, config):
    """-> (SynthPair, the edited image's JPEG bytes or None when it was not JPEG-compressed)."""
    rng = np.random.default_rng(seed)
    action = _action(rng, config.action_weights)
    scene = make_scene(rng, config.image_size, config.use_photos, config.photo_prob)
    edit = EDITS[action](rng, scene)
    candidate, region = edit.candidate, edit.region
    # every object's geometry, so a simulated detector can find it and its look-alikes (synth_grounder)
    meta = {"seed": seed, "scene": scene.kind, **edit.info, "image_size": config.image_size,
            "objects": [object_info(obj) for obj in scene.objects]}
    effect = None
    if action != "global" and rng.random() < config.side_effect_prob:
        effect = side_effect(rng, edit.original, region)
    if effect is not None:
        changed, blob, meta["side_effect"] = effect
        candidate, region = np.where(blob[..., None], changed, candidate), region | blob
    clean, mask = finalize(edit.original, candidate, region)
    edited, data = clean, None
    if rng.random() < config.perturb_prob:
        model = load_autoencoder(config.autoencoder_settings, config.cache_dir) if config.autoencoder else None
        edited, meta["perturbation"], data = perturb(rng, clean, model, config.jpeg_quality)
    if config.keep_clean:
        meta["edited_clean"] = clean
    pair = SynthPair(edit.original, edited, mask, edit.instruction, edit.action, edit.source, edit.target,
                     perturbed="perturbation" in meta, side_effect=effect is not None, meta=meta)
    return pair, data


def generate_pair(seed: int, config: SynthConfig) -> SynthPair:
    """One synthetic pair; the same `seed` and `config` give identical arrays and texts."""
    return _make_pair(seed, config)[0]


def sample_seed(seed, index):
    """The seed of sample `index` of a dataset made with `seed` (independent streams per sample)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_png(path, array):
    Image.fromarray(array).save(path, format="PNG")


def generate_dataset(out_dir, count, seed, config, progress=True):
    """Writes `count` pairs under `out_dir` (original/*.png, edited/*.png or *.jpg when the
    perturbation JPEG-compressed it (the exact bytes), mask/*.png 0/255) and `manifest.jsonl`
    with relative paths. Returns the manifest's path."""
    config = dataclasses.replace(config, keep_clean=False)
    for folder in ("original", "edited", "mask"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    manifest = os.path.join(out_dir, "manifest.jsonl")
    with open(manifest, "w") as rows:
        for index in tqdm(range(count), desc="synthetic pairs", disable=not progress):
            pair, data = _make_pair(sample_seed(seed, index), config)
            rows.write(json.dumps(_write_sample(out_dir, f"synth_{index:07d}", pair, data)) + "\n")
    return manifest


def _write_sample(out_dir, key, pair, data):
    original, mask = f"original/{key}.png", f"mask/{key}.png"
    edited = f"edited/{key}.jpg" if data is not None else f"edited/{key}.png"
    _write_png(os.path.join(out_dir, original), pair.original)
    _write_png(os.path.join(out_dir, mask), pair.mask)
    if data is not None:
        with open(os.path.join(out_dir, edited), "wb") as handle:
            handle.write(data)
    else:
        _write_png(os.path.join(out_dir, edited), pair.edited)
    return {"key": key, "original": original, "edited": edited, "mask": mask, "instruction": pair.instruction,
            "action": pair.action, "source": pair.source, "target": pair.target, "perturbed": pair.perturbed,
            "side_effect": pair.side_effect, "meta": pair.meta}
