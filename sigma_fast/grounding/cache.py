"""Cache of groundings keyed by image content, concept, models and thresholds.

In memory (a bounded LRU) and optionally on disk, one small file per entry (masks bit-packed), so a
re-run of a corpus does not run the detector and segmenter again.
"""
import hashlib
import os
import tempfile
from collections import OrderedDict

import numpy as np
import torch

from sigma_fast.grounding.prior import Grounding


def image_digest(image):
    """Content hash of a uint8 (H, W, 3) tensor (shape included)."""
    array = np.ascontiguousarray(image.detach().cpu().numpy())
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def entry_key(image_hash, concept, settings):
    """The cache key of one (image, concept) under the grounder's `settings` (model ids, thresholds)."""
    return hashlib.blake2b(f"{image_hash}|{concept}|{settings}".encode(), digest_size=20).hexdigest()


class GroundingCache:
    """`get(key)` -> Grounding or None; `put(key, grounding)`. `folder` None keeps it in memory only."""

    def __init__(self, folder=None, max_entries=1024):
        self.folder = folder
        self.max_entries = max_entries
        self._memory = OrderedDict()
        if folder is not None:
            os.makedirs(folder, exist_ok=True)

    def __len__(self):
        return len(self._memory)

    def get(self, key):
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if self.folder is None or not os.path.isfile(self._path(key)):
            return None
        grounding = _unpack(torch.load(self._path(key), weights_only=True))
        self._remember(key, grounding)
        return grounding

    def put(self, key, grounding):
        self._remember(key, grounding)
        if self.folder is not None:
            # Written to a temporary name and renamed, so a killed run never leaves a torn entry.
            handle, partial = tempfile.mkstemp(dir=self.folder, suffix=".part")
            os.close(handle)
            torch.save(_pack(grounding), partial)
            os.replace(partial, self._path(key))

    def _remember(self, key, grounding):
        self._memory[key] = grounding
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def _path(self, key):
        return os.path.join(self.folder, f"{key}.pt")


def _pack(grounding):
    packed = {"boxes": [list(box) for box in grounding.boxes]}
    if grounding.mask is not None:
        mask = grounding.mask.cpu().numpy()
        packed["shape"] = list(mask.shape)
        packed["bits"] = torch.from_numpy(np.packbits(mask.reshape(-1)))
    return packed


def _unpack(packed):
    boxes = tuple(tuple(box) for box in packed["boxes"])
    if "bits" not in packed:
        return Grounding(boxes, None)
    height, width = packed["shape"]
    bits = np.unpackbits(packed["bits"].numpy(), count=height * width)
    return Grounding(boxes, torch.from_numpy(bits.reshape(height, width).astype(bool)))
