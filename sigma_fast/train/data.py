"""Training sources and sample decoding.

A source is a list of *blocks* of rows: a parquet file's row groups (read one row group at a time,
only the needed columns, never the whole file) or a manifest's rows as one block. Rows come back
undecoded (bytes or paths); `decode_sample` turns one into model-sized uint8 images and a mask.

Mask rule (MagicBrush's `mask_img` may be RGBA, white-on-black and of another size than the image):
the mask's grey value is its luminance (ITU-R 601, PIL's "L") times its alpha / 255, i.e. the mask
composited over black, so transparent pixels count as unedited; it is resized to the model's input
size (bilinear, antialiased, on [0, 1]) whatever its own size or aspect, then binarised at > 0.5.

Row keys are the corpus readers' (`sigma_fast.io.corpora`), so a prior store made from the same
files with `sigma-fast prior` is read by them: MagicBrush `"{img_id}/{turn_index}"`, OmniEdit
`omni_edit_id`, other parquet `"{file stem}/{row in file:08d}"`, manifests their `key` column.
"""
import glob
import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sigma_fast.io.images import ImageLoadError, load_image, load_mask

ROW_GROUP_CACHE = 8  # row groups kept per process: a shuffle window spans a few
KEY_COLUMNS = {"magicbrush": ("img_id", "turn_index"), "omniedit": ("omni_edit_id",)}  # the corpus readers' keys


class SampleError(ValueError):
    """A row that cannot become a training sample (corrupt image, missing mask): skipped, counted."""


@dataclass
class RawRow:
    key: str
    original: object  # bytes or a path
    edited: object
    mask: object  # bytes, a path or None
    instruction: str


def expand_paths(pattern, suffix):
    """A file, a folder (its `*suffix` files) or a glob -> sorted file list; error when empty."""
    if os.path.isdir(pattern):
        files = sorted(glob.glob(os.path.join(pattern, f"*{suffix}")))
    elif any(ch in pattern for ch in "*?["):
        files = sorted(glob.glob(pattern))
    else:
        files = [pattern] if os.path.isfile(pattern) else []
    if not files:
        raise FileNotFoundError(f"no data files match {pattern!r}")
    return files


class ParquetSource:
    """MagicBrush-style parquet: image columns are {bytes, path} structs (or binary, or path strings)."""

    def __init__(self, config, need_mask):
        import pyarrow.parquet as pq

        self.files = expand_paths(config.path, ".parquet")
        self.roles = {role: name for role, name in config.columns.items() if name and (role != "mask" or need_mask)}
        if need_mask and "mask" not in self.roles:
            raise ValueError(f"{config.path}: labelled data needs a mask column (columns.mask)")
        from sigma_fast.io.corpora.parquet import format_of

        self.blocks = []  # (file index, row group, rows)
        self.first_rows = []  # per block, the file row of its first row (the default key's number)
        self.key_columns = []  # per file, the columns of its corpus key (empty: the default key)
        remaining = config.limit
        for index, path in enumerate(self.files):
            metadata = pq.ParquetFile(path).metadata
            names = set(metadata.schema.to_arrow_schema().names)
            missing = sorted(name for name in self.roles.values() if name not in names)
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; it has {sorted(names)} "
                                 "(map other names with `columns`)")
            self.key_columns.append(KEY_COLUMNS.get(format_of(names), ()))
            first = 0
            for group in range(metadata.num_row_groups):
                rows = full = metadata.row_group(group).num_rows
                if remaining is not None:
                    rows = min(rows, remaining)
                    remaining -= rows
                if rows:
                    self.blocks.append((index, group, rows))
                    self.first_rows.append(first)
                first += full
        self._pid = None

    def block_sizes(self):
        return [rows for _, _, rows in self.blocks]

    def _row_group(self, block):
        import pyarrow.parquet as pq

        if self._pid != os.getpid():  # a forked worker opens its own handles
            self._pid, self._handles, self._cache = os.getpid(), {}, OrderedDict()
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        file_index, group, _ = self.blocks[block]
        if file_index not in self._handles:
            self._handles[file_index] = pq.ParquetFile(self.files[file_index])
        key_columns = self.key_columns[file_index]
        table = self._handles[file_index].read_row_group(
            group, columns=sorted(set(self.roles.values()) | set(key_columns)))
        columns = {role: table.column(name).to_pylist() for role, name in self.roles.items()}
        columns["key"] = [tuple(values) for values in zip(*(table.column(name).to_pylist() for name in key_columns))]
        self._cache[block] = columns
        if len(self._cache) > ROW_GROUP_CACHE:
            self._cache.popitem(last=False)
        return columns

    def _image(self, cell, folder):
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return cell["bytes"]
            cell = cell.get("path")
        if isinstance(cell, str) and cell:
            return cell if os.path.isabs(cell) else os.path.join(folder, cell)
        return cell or None

    def row(self, block, index):
        columns = self._row_group(block)
        file_index, group, _ = self.blocks[block]
        folder = os.path.dirname(os.path.abspath(self.files[file_index]))
        key = corpus_key(columns["key"][index] if columns["key"] else (),
                         f"{os.path.splitext(os.path.basename(self.files[file_index]))[0]}/"
                         f"{self.first_rows[block] + index:08d}")
        return RawRow(key, self._image(columns["original"][index], folder), self._image(columns["edited"][index], folder),
                      self._image(columns["mask"][index], folder) if "mask" in columns else None,
                      columns["instruction"][index] if "instruction" in columns else "")


def corpus_key(values, default):
    """The key the corpus reader gives a row: from its key column values ((img_id, turn) or (id,)),
    `default` when there are none or one is missing."""
    if not values or any(value in (None, "") for value in values):
        return default
    return "/".join(str(value) for value in values)


class ManifestSource:
    """A JSONL/CSV manifest (`read_manifest`): random access, so all rows form one block."""

    def __init__(self, config, need_mask):
        from sigma_fast.data.manifest import read_manifest

        self.records, self.failures = read_manifest(config.path)
        if config.limit is not None:
            self.records = self.records[:config.limit]
        if not self.records:
            raise ValueError(f"{config.path}: no usable rows")
        self.need_mask = need_mask

    def block_sizes(self):
        return [len(self.records)]

    def row(self, block, index):
        record = self.records[index]
        return RawRow(record.key, record.original, record.edited, record.mask if self.need_mask else None,
                      record.instruction)


def open_source(config, need_mask):
    if config.format == "parquet":
        return ParquetSource(config, need_mask)
    return ManifestSource(config, need_mask)


def resize_image(image, size):
    # uint8 (H, W, 3) -> uint8 (size, size, 3), bilinear with antialiasing as preprocess_pairs resizes
    if image.shape[0] == size and image.shape[1] == size:
        return image
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def load_training_mask(source, size):
    """Mask bytes or path -> float32 (size, size) in {0, 1} by `sigma_fast.io.images.load_mask`'s rule."""
    if source is None:
        raise SampleError("no mask")
    try:
        return load_mask(source, (size, size)).float()
    except ImageLoadError as error:
        raise SampleError(f"unreadable mask ({error.reason})") from error


def jpeg_reencode(image, quality):
    """uint8 (H, W, 3) -> the same image after a JPEG save at `quality` (a mild, editor-free change)."""
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="JPEG", quality=int(quality))
    return load_image(buffer.getvalue())


@dataclass
class NegativeSettings:
    fraction: float
    reencode_fraction: float
    quality: tuple


def decode_sample(row: RawRow, size, need_mask, rng, negatives: Optional[NegativeSettings]):
    """A raw row -> dict(original, edited: uint8 (S, S, 3), mask: float (S, S) or None, kind).

    With `negatives`, `rng` (a numpy Generator for this sample's position) decides whether the row
    becomes a real/real negative: the original against itself or a JPEG re-encode, target all zero.
    """
    negative = negatives is not None and rng.random() < negatives.fraction
    try:
        original = load_image(row.original)
        if negative:
            reencode = rng.random() < negatives.reencode_fraction
            quality = rng.integers(negatives.quality[0], negatives.quality[1] + 1)
            edited = jpeg_reencode(original, quality) if reencode else original
        else:
            edited = load_image(row.edited)
    except ImageLoadError as error:
        raise SampleError(str(error)) from error
    mask = None
    if negative:
        mask = torch.zeros(size, size)
    elif need_mask:
        mask = load_training_mask(row.mask, size)
    return {"original": resize_image(original, size), "edited": resize_image(edited, size), "mask": mask,
            "kind": "negative" if negative else "positive"}
