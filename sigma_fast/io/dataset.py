"""Writing an IMDL-BenCo dataset, resumably.

Layout of the output folder:
- `masks/<key>.png`: single-channel 0/255 PNG at the edited image's exact size;
- `images/<key>_{edited,original}.png`: written only when an input cannot be referenced as it is
  (its EXIF orientation changes its geometry, which IML readers ignore), else the input's own path
  is listed;
- `priors/<key>.png`: the (g, g) grounded prior as 8-bit gray, when the annotator grounds;
- `metadata.jsonl`: one row per finished pair, appended as soon as its mask is on disk, so it is
  also the record of finished keys: a re-run skips them and completes only what is missing;
- `failures.jsonl`: `{key, path, reason}` per skipped pair of this run (failed pairs are retried
  on a re-run, so the file is rewritten each run);
- `dataset.json`: IMDL-BenCo JsonDataset list `[[image, mask], ...]`, with each original image
  listed as `[original, "Negative"]`; rebuilt from `metadata.jsonl` when the writer closes.
"""
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

METADATA = "metadata.jsonl"
FAILURES = "failures.jsonl"
DATASET = "dataset.json"
NEGATIVE = "Negative"
MAX_PENDING_WRITES = 256


def read_finished(path):
    """Rows of an existing metadata.jsonl; a torn last line (a crash mid-write) is dropped."""
    if not os.path.isfile(path):
        return []
    rows, torn = [], False
    with open(path) as handle:
        for text in handle:
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError:
                torn = True
    if torn:
        with open(path, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def save_png(array, path):
    tmp = path + ".tmp"
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)  # never leaves a half-written file under the final name


class BenCoWriter:
    def __init__(self, out_dir, workers=2, negatives=True):
        self.out_dir = os.path.abspath(out_dir)
        self.mask_dir = os.path.join(self.out_dir, "masks")
        self.image_dir = os.path.join(self.out_dir, "images")
        self.prior_dir = os.path.join(self.out_dir, "priors")
        os.makedirs(self.mask_dir, exist_ok=True)
        self.negatives = negatives
        self.metadata_path = os.path.join(self.out_dir, METADATA)
        self.finished = {row["key"] for row in read_finished(self.metadata_path)}
        self.failure_count = 0
        self._lock = threading.Lock()
        self._metadata = open(self.metadata_path, "a")
        self._failures = open(os.path.join(self.out_dir, FAILURES), "w")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigma-writer")
        self._pending = []

    def fail(self, key, path, reason):
        with self._lock:
            self._failures.write(json.dumps({"key": key, "path": path, "reason": reason}) + "\n")
            self._failures.flush()
            self.failure_count += 1

    def write(self, record, annotation, original, edited):
        """Queue one finished pair (`original`/`edited` are the DecodedImages the model saw)."""
        self._pending.append(self._pool.submit(self._write, record, annotation, original, edited))
        if len(self._pending) > MAX_PENDING_WRITES:  # back-pressure: never queue unbounded images in memory
            self._pending[0].result()
        for future in self._pending:
            if future.done():
                future.result()  # surfaces an unexpected writer error now, not at close
        self._pending = [future for future in self._pending if not future.done()]

    def _listed_path(self, source, decoded, key, role):
        if not decoded.reoriented:
            return os.path.abspath(source)
        os.makedirs(self.image_dir, exist_ok=True)
        path = os.path.join(self.image_dir, f"{key}_{role}.png")
        save_png(decoded.pixels.numpy(), path)
        return path

    def _save_prior(self, prior, key):
        if prior is None:
            return None
        os.makedirs(self.prior_dir, exist_ok=True)
        path = os.path.join(self.prior_dir, f"{key}.png")
        save_png((np.clip(prior, 0, 1) * 255).round().astype(np.uint8), path)
        return path

    def _write(self, record, annotation, original, edited):
        try:
            mask_path = os.path.join(self.mask_dir, f"{record.key}.png")
            save_png(annotation.mask, mask_path)
            row = {
                "key": record.key,
                "image": self._listed_path(record.edited, edited, record.key, "edited"),
                "original": self._listed_path(record.original, original, record.key, "original"),
                "mask": mask_path,
                "source_original": record.original,
                "source_edited": record.edited,
                "instruction": record.instruction,
                "edit": annotation.edit.to_dict(),
                "score": round(annotation.score, 6),
                "height": int(annotation.mask.shape[0]),
                "width": int(annotation.mask.shape[1]),
                "mask_fraction": round(float((annotation.mask > 0).mean()), 6),
                "line": record.line,
                "prior": self._save_prior(annotation.prior, record.key),
                "prior_flat": annotation.prior_flat,
                "boxes": annotation.boxes,
                "gt_mask": record.mask,
                **({"extra": record.extra} if record.extra else {}),
            }
        except (OSError, ValueError) as error:
            self.fail(record.key, record.edited, f"could not write outputs: {error}")
            return
        with self._lock:
            self._metadata.write(json.dumps(row) + "\n")
            self._metadata.flush()
            self.finished.add(record.key)

    def close(self):
        """Wait for queued writes, then rebuild dataset.json from metadata.jsonl."""
        self._pool.shutdown(wait=True)
        for future in self._pending:
            future.result()
        self._metadata.close()
        self._failures.close()
        entries = []
        # metadata.jsonl is in completion order; the dataset follows the manifest's order
        for row in sorted(read_finished(self.metadata_path), key=lambda row: (row["line"], row["key"])):
            entries.append([row["image"], row["mask"]])
            if self.negatives:
                entries.append([row["original"], NEGATIVE])
        tmp = os.path.join(self.out_dir, DATASET + ".tmp")
        with open(tmp, "w") as handle:
            json.dump(entries, handle, indent=1)
        os.replace(tmp, os.path.join(self.out_dir, DATASET))
        return len(entries)
