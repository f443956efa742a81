"""IMDL-BenCo output: images, masks and `dataset.json` (JsonDataset), optionally `benco/Tp` + `benco/Gt`
(ManiDataset).

Per pair, in its shard folder `shards/NNNNN/`:
- `masks/<name>.png`: single-channel 0/255 PNG at the edited image's exact size;
- `images/<name>_edited.<ext>`, `images/<name>_original.<ext>`: the input's own bytes, copied (the
  dataset stands on its own and can be moved), except where a PIL `convert("RGB")` reader (which
  IMDL-BenCo uses) would read another picture than the one annotated: anything but an 8-bit RGB or
  gray JPEG/PNG/WebP/BMP without an EXIF rotation (16-bit, CMYK, palette, alpha, EXIF-rotated ...)
  is written as an 8-bit RGB PNG of the pixels the model saw;
- `priors/<name>.png`: the (g, g) grounded prior as 8-bit gray, when the annotator grounds.
`dataset.json` lists absolute paths, as JsonDataset needs (it resolves relative ones against the
trainer's working directory); metadata keeps paths relative to OUT, so `relocate` rebuilds
`dataset.json` after the folder was moved.
"""
import io
import json
import os
import shutil

import numpy as np
from PIL import Image

from sigma_fast.io.writers.names import extension, image_format
from sigma_fast.io.writers.shards import RUN_FILE

DATASET = "dataset.json"
METADATA = "metadata.jsonl"
MANI = "benco"
NEGATIVE = "Negative"
DIRECT_FORMATS = {"JPEG", "PNG", "WEBP", "BMP"}
DIRECT_MODES = {"RGB", "L"}


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_copy(data, decoded):
    """-> (extension, bytes, how): the input's bytes, or an 8-bit RGB PNG of `decoded` where a
    `convert("RGB")` reader would see something else."""
    pil_format, mode, _ = image_format(data)
    if pil_format in DIRECT_FORMATS and mode in DIRECT_MODES and not decoded.reoriented:
        return extension(pil_format), data, "bytes"
    return "png", png_bytes(decoded.pixels.cpu().numpy()), "rgb_png"


def write_file(folder, relative, data):
    path = os.path.join(folder, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def write_pair(folder, shard_path, name, record, original, edited, mask_png, prior):
    """Write one kept pair into the shard's partial `folder`; -> the row's path fields, relative to
    OUT (`shard_path` is the shard's final folder relative to OUT)."""
    row, copies = {}, {}
    for role, data, decoded in (("edited", record.edited, edited), ("original", record.original, original)):
        ext, payload, copies[role] = image_copy(data, decoded)
        relative = os.path.join("images", f"{name}_{role}.{ext}")
        write_file(folder, relative, payload)
        row["image" if role == "edited" else "original"] = os.path.join(shard_path, relative)
    write_file(folder, os.path.join("masks", f"{name}.png"), mask_png)
    row["mask"] = os.path.join(shard_path, "masks", f"{name}.png")
    row["image_copy"] = copies
    row["prior"] = None
    if prior is not None:
        relative = os.path.join("priors", f"{name}.png")
        write_file(folder, relative, png_bytes((np.clip(prior, 0, 1) * 255).round().astype(np.uint8)))
        row["prior"] = os.path.join(shard_path, relative)
    return row


def dataset_entries(out_dir, row, negatives):
    if row["filtered"] or row.get("mask") is None:
        return []
    entries = [[os.path.join(out_dir, row["image"]), os.path.join(out_dir, row["mask"])]]
    if negatives:
        entries.append([os.path.join(out_dir, row["original"]), NEGATIVE])
    return entries


class DatasetFile:
    """dataset.json written entry by entry (a corpus run may list millions), renamed when complete."""

    def __init__(self, out_dir, negatives):
        self.out_dir, self.negatives = out_dir, negatives
        self.path = os.path.join(out_dir, DATASET)
        self.handle = open(self.path + ".tmp", "w")
        self.count = 0

    def add(self, row):
        for entry in dataset_entries(self.out_dir, row, self.negatives):
            self.handle.write(("[\n " if self.count == 0 else ",\n ") + json.dumps(entry))
            self.count += 1

    def close(self):
        self.handle.write("\n]\n" if self.count else "[]\n")
        self.handle.close()
        os.replace(self.path + ".tmp", self.path)
        return self.count


def link(source, target):
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy has the same bytes
        shutil.copyfile(source, target)


class ManiLayout:
    """`benco/Tp/<name>.<ext>` + `benco/Gt/<name>.png` (identical stems, ManiDataset pairs them by
    sorted listing), as hard links to the shard files; rebuilt whole at the end of every run.
    Authentic originals have no place in this layout and are left out."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.tmp = os.path.join(out_dir, f".{MANI}.partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(os.path.join(self.tmp, "Tp"))
        os.makedirs(os.path.join(self.tmp, "Gt"))
        self.names = set()

    def add(self, row):
        if row["filtered"] or row.get("mask") is None:
            return
        stem = row["name"] if row["name"] not in self.names else f"{row['name']}-{row['index']}"
        self.names.add(stem)
        ext = os.path.splitext(row["image"])[1]
        link(os.path.join(self.out_dir, row["image"]), os.path.join(self.tmp, "Tp", stem + ext))
        link(os.path.join(self.out_dir, row["mask"]), os.path.join(self.tmp, "Gt", stem + ".png"))

    def close(self):
        final = os.path.join(self.out_dir, MANI)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(self.tmp, final)


def relocate(out_dir):
    """Rewrite dataset.json's absolute paths for the folder's present place; -> entries written."""
    out_dir = os.path.abspath(out_dir)
    run_file, metadata = os.path.join(out_dir, RUN_FILE), os.path.join(out_dir, METADATA)
    if not (os.path.isfile(run_file) and os.path.isfile(metadata)):
        raise FileNotFoundError(f"{out_dir} holds no finished sigma-fast annotate output ({RUN_FILE}, {METADATA})")
    with open(run_file) as handle:
        settings = json.load(handle)
    if "benco" not in settings["writers"]:
        return 0
    dataset = DatasetFile(out_dir, settings["negatives"])
    with open(metadata) as handle:
        for line in handle:
            dataset.add(json.loads(line))
    return dataset.close()
