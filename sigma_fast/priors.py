"""The prior store: one (g, g) instruction-grounded prior per corpus key, on disk, and the run that
fills it from a corpus (`sigma-fast prior`).

Layout of a store folder:

    PRIORS/priors.json          {"version": 1, "grid": g, "settings": {...}}: who made the priors
    PRIORS/maps/<name>.png      the prior of a grounded pair, 8-bit gray (value / 255 in [0, 1])
    PRIORS/maps/<name>.flat     an empty file: the pair was grounded and its prior is flat (all ones)

`<name>` is `sigma_fast.io.writers.names.safe_name(key)`. A key with neither file was never grounded:
reading it gives the flat prior, counted in `missing` and logged once. Each entry is written to a
temporary name and renamed, so a killed run leaves no torn file and a re-run skips what exists.
`settings` names the producer (the grounder's model ids and thresholds, or another producer's, such
as a simulated grounder's); a second run into the same folder must have the same grid and settings.
PNG encoding is deterministic, so the same priors give the same bytes.
"""
import io
import json
import logging
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from sigma_fast.io.writers.names import safe_name

logger = logging.getLogger(__name__)

VERSION = 1
INDEX = "priors.json"
MAPS = "maps"
PRIOR_SUFFIX = ".png"
FLAT_SUFFIX = ".flat"


class PriorStore:
    """`put(key, prior, flat)`, `get(key)` -> (prior float32 (g, g), flat bool), `has(key)`.
    Open an existing store with `PriorStore(folder)`; make or reopen one with `PriorStore.create`."""

    def __init__(self, folder):
        path = os.path.join(folder, INDEX)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder!r} is not a prior store (no {INDEX}): make one with `sigma-fast prior`")
        with open(path) as handle:
            index = json.load(handle)
        if index.get("version") != VERSION:
            raise ValueError(f"{path}: prior store version {index.get('version')}, expected {VERSION}")
        self.folder = folder
        self.grid = int(index["grid"])
        self.settings = index["settings"]
        self.missing = 0

    @classmethod
    def create(cls, folder, grid, settings):
        """A new store in `folder`, or the one already there when its grid and settings match."""
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}")
        settings = json.loads(json.dumps(settings))  # what reading it back gives
        path = os.path.join(folder, INDEX)
        if os.path.isfile(path):
            store = cls(folder)
            if (store.grid, store.settings) != (grid, settings):
                raise ValueError(f"{folder!r} holds priors made with grid {store.grid} and {store.settings}, "
                                 f"not grid {grid} and {settings}: use another folder")
            return store
        os.makedirs(os.path.join(folder, MAPS), exist_ok=True)
        _write_atomic(folder, INDEX, json.dumps({"version": VERSION, "grid": grid, "settings": settings},
                                                indent=1, sort_keys=True).encode())
        return cls(folder)

    def _path(self, key, suffix):
        return os.path.join(self.folder, MAPS, safe_name(key) + suffix)

    def has(self, key):
        return os.path.isfile(self._path(key, PRIOR_SUFFIX)) or os.path.isfile(self._path(key, FLAT_SUFFIX))

    def names(self):
        """The safe names of the stored keys (one listing: what a resumed run skips)."""
        folder = os.path.join(self.folder, MAPS)
        return {os.path.splitext(name)[0] for name in os.listdir(folder)
                if name.endswith((PRIOR_SUFFIX, FLAT_SUFFIX))} if os.path.isdir(folder) else set()

    def put(self, key, prior, flat):
        """`prior` (g, g) in [0, 1] (tensor or array); a flat entry stores no map."""
        if flat:
            _write_atomic(os.path.join(self.folder, MAPS), safe_name(key) + FLAT_SUFFIX, b"")
            return
        prior = torch.as_tensor(prior).detach().float().cpu()
        if tuple(prior.shape) != (self.grid, self.grid):
            raise ValueError(f"prior of {key!r} has shape {tuple(prior.shape)}, the store's grid is {self.grid}")
        pixels = (prior.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, format="PNG")
        _write_atomic(os.path.join(self.folder, MAPS), safe_name(key) + PRIOR_SUFFIX, buffer.getvalue())

    def get(self, key):
        """-> (prior float32 (g, g), flat). A key never stored is flat, counted and logged once."""
        path = self._path(key, PRIOR_SUFFIX)
        if os.path.isfile(path):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"), dtype=np.float32)
            return torch.from_numpy(pixels / 255.0), False
        if not os.path.isfile(self._path(key, FLAT_SUFFIX)):
            if self.missing == 0:
                logger.warning("no prior for %r in %s (and maybe others): the flat prior is used for it",
                               key, self.folder)
            self.missing += 1
        return torch.ones(self.grid, self.grid), True


def _write_atomic(folder, name, data):
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(partial, os.path.join(folder, name))


def grounder_settings(grounder):
    """What identifies a Grounder's priors: detector and segmenter ids and thresholds."""
    detector, segmenter, box, text, boxes = grounder.settings.split("|")
    return {"producer": "grounder", "detector": detector, "segmenter": segmenter, "box_threshold": float(box),
            "text_threshold": float(text), "max_boxes": int(boxes)}


def compute_priors(corpus, folder, grounder, grid, batch_size=8, parser=None, settings=None, progress=True):
    """Ground every pair of `corpus` (an `open_corpus` Corpus) into the store at `folder`, `batch_size`
    pairs per grounder call and per parser call (where the parser parses batches, as the LLM parser
    does); keys already stored are skipped (resume). `grounder` has `priors(originals, editeds, edits,
    grid)` -> GroundingResult (a `Grounder`, or any producer with that method, whose `settings`
    mapping is then given). Returns counts: grounded, flat, skipped
    (already stored), failed (rows that cannot be read or decoded), total."""
    from tqdm.auto import tqdm

    from sigma_fast.grounding import parse_instruction
    from sigma_fast.grounding.parsers import parse_all
    from sigma_fast.io.corpora import RowFailure
    from sigma_fast.io.images import ImageLoadError, load_image

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    parser = parser or parse_instruction
    store = PriorStore.create(folder, grid, grounder_settings(grounder) if settings is None else settings)
    done = store.names()
    counts = {"grounded": 0, "flat": 0, "skipped": 0, "failed": 0}
    batch = []

    def flush():
        edits = parse_all(parser, [b[3] for b in batch])
        result = grounder.priors([b[1] for b in batch], [b[2] for b in batch], edits, grid)
        for (key, *_), prior, flat in zip(batch, result.prior, result.flat.tolist()):
            store.put(key, prior, flat)
            counts["flat" if flat else "grounded"] += 1
        batch.clear()

    bar = tqdm(total=corpus.total(), unit="pair", desc="prior", disable=not progress, dynamic_ncols=True)
    try:
        for item in corpus:
            bar.update(1)
            if isinstance(item, RowFailure):
                counts["failed"] += 1
                continue
            if safe_name(item.key) in done:
                counts["skipped"] += 1
                continue
            try:
                original, edited = load_image(item.original), load_image(item.edited)
            except ImageLoadError as error:
                logger.warning("skipping %s: %s", item.key, error)
                counts["failed"] += 1
                continue
            batch.append((item.key, original, edited, item.instruction))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
    counts["total"] = sum(counts.values())
    return counts
