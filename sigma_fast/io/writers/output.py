"""One shard's writing (`ShardWriter`) and the merge of all done shards into the run's files.

A shard folder holds `metadata.jsonl` (one row per annotated pair, kept or filtered, in input
order), `failures.jsonl` (`{index, key, source, reason}` per skipped row, in input order), the
BenCo files and `done.json`. At the end of every run the done shards are merged, in order, into
OUT's `metadata.jsonl`, `failures.jsonl`, `stats.json`, `dataset.json` and `benco/` (ManiDataset):
each is written under a temporary name and renamed, and depends only on the shards' content.
"""
import json
import os
from collections import deque
from concurrent.futures import Future

from sigma_fast.io.messages import one_line
from sigma_fast.io.writers import benco, quality
from sigma_fast.io.writers.names import extension, image_format, safe_name
from sigma_fast.io.writers.shards import SHARDS, commit_shard, shard_dir, start_shard, write_json
from sigma_fast.io.writers.webdataset import TarShard, tar_path

WRITERS = ("benco", "webdataset")
METADATA = "metadata.jsonl"
FAILURES = "failures.jsonl"
STATS = "stats.json"


def dumps(row):
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


class ShardWriter:
    """Collects one shard's pairs and failures, in input order, and commits the shard on `close`.

    `add` hands a pair to `pool` (PNG encoding and file writes off the model's thread); results are
    taken back in submission order, at most `window` outstanding, so memory stays bounded.
    """

    def __init__(self, out_dir, shard, pool, writers=("benco",), min_score=None, drop_regenerated=False, window=64):
        self.out_dir, self.shard, self.pool, self.window = out_dir, shard, pool, window
        self.writers = writers
        self.min_score, self.drop_regenerated = min_score, drop_regenerated
        self.folder = start_shard(out_dir, shard)
        self.final = os.path.relpath(shard_dir(out_dir, shard), out_dir)
        self.tar = TarShard(tar_path(out_dir, shard)) if "webdataset" in writers else None
        self.names = set()
        self.pending = deque()
        self.metadata = open(os.path.join(self.folder, METADATA), "w")
        self.failures = open(os.path.join(self.folder, FAILURES), "w")
        self.counts = {"rows": 0, "annotated": 0, "failed": 0}

    def fail(self, index, key, source, reason):
        failure = {"index": index, "key": key, "source": source, "reason": one_line(reason)}
        self.pending.append(("failure", failure))
        self._drain(self.window)

    def add(self, record, annotation, original, edited):
        name = safe_name(record.key)
        if name in self.names:  # the corpus repeats a key
            name = f"{name}-{record.index}"
        self.names.add(name)
        self.pending.append(self.pool.submit(self._pair, name, record, annotation, original, edited))
        self._drain(self.window)

    def _pair(self, name, record, annotation, original, edited):
        """-> ("pair", row, tar members or None), or ("failure", failure) when the files cannot be written."""
        try:
            return ("pair", *self._pair_files(name, record, annotation, original, edited))
        except (OSError, ValueError) as error:
            return ("failure", {"index": record.index, "key": record.key, "source": record.meta.get("source"),
                                "reason": one_line(f"could not write outputs: {error}")})

    def _pair_files(self, name, record, annotation, original, edited):
        change = quality.changed_outside(original.pixels, edited.pixels, annotation.mask)
        regenerated = quality.is_regenerated(change)
        score = round(float(annotation.score), 6)
        row = {
            "index": record.index, "key": record.key, "name": name, "instruction": record.instruction,
            "edit": annotation.edit.to_dict(), "score": score, "changed_outside": change,
            "regenerated": regenerated,
            "filtered": quality.filter_reason(score, regenerated, self.min_score, self.drop_regenerated),
            "height": int(annotation.mask.shape[0]), "width": int(annotation.mask.shape[1]),
            "mask_fraction": round(float((annotation.mask > 0).mean()), 6),
            "prior_mode": annotation.prior_mode, "prior_flat": annotation.prior_flat, "boxes": annotation.boxes,
            "has_gt_mask": record.mask is not None,
            "image": None, "original": None, "mask": None, "prior": None, "meta": record.meta,
        }
        members = None
        if not row["filtered"]:
            mask_png = benco.png_bytes(annotation.mask)
            if "benco" in self.writers:
                row.update(benco.write_pair(self.folder, self.final, name, record, original, edited, mask_png,
                                            annotation.prior))
            if self.tar is not None:
                members = {f"orig.{extension(image_format(record.original)[0])}": record.original,
                           f"edit.{extension(image_format(record.edited)[0])}": record.edited,
                           "mask.png": mask_png, "json": dumps(tar_json(row)).encode()}
        return row, members

    def _drain(self, keep):
        while len(self.pending) > keep:
            entry = self.pending.popleft()
            entry = entry.result() if isinstance(entry, Future) else entry
            self.counts["rows"] += 1
            if entry[0] == "failure":
                self.counts["failed"] += 1
                self.failures.write(dumps(entry[1]) + "\n")
                continue
            _, row, members = entry
            self.counts["annotated"] += 1
            self.metadata.write(dumps(row) + "\n")
            if members is not None:
                self.tar.add(row["name"], members)

    def close(self):
        """Finish every queued pair, write the shard's files and commit it (rename + done record)."""
        self._drain(0)
        self.metadata.close()
        self.failures.close()
        if self.tar is not None:
            self.tar.close()
        commit_shard(self.out_dir, self.shard, dict(self.counts))
        return dict(self.counts)


def tar_json(row):
    """The `<name>.json` member: what a training loader needs beside the images."""
    return {name: row[name] for name in ("index", "key", "instruction", "edit", "score", "changed_outside",
                                         "regenerated", "mask_fraction", "prior_mode", "prior_flat", "has_gt_mask",
                                         "meta")}


def read_jsonl(path):
    with open(path) as handle:
        for line in handle:
            yield json.loads(line)


def finish_run(out_dir, shard_count, writers, negatives=True, manidataset=False):
    """Merge shards 0 .. shard_count-1 into OUT's metadata, failures, stats, dataset.json and benco/;
    -> (stats dict, dataset.json entries or None)."""
    stats = quality.RunStats()
    metadata_tmp, failures_tmp = (os.path.join(out_dir, name + ".tmp") for name in (METADATA, FAILURES))
    dataset = benco.DatasetFile(out_dir, negatives) if "benco" in writers else None
    mani = benco.ManiLayout(out_dir) if manidataset and "benco" in writers else None
    with open(metadata_tmp, "w") as metadata, open(failures_tmp, "w") as failures:
        for shard in range(shard_count):
            folder = os.path.join(out_dir, SHARDS, f"{shard:05d}")
            for row in read_jsonl(os.path.join(folder, METADATA)):
                metadata.write(dumps(row) + "\n")
                stats.add_row(row)
                for sink in (dataset, mani):
                    if sink is not None:
                        sink.add(row)
            for failure in read_jsonl(os.path.join(folder, FAILURES)):
                failures.write(dumps(failure) + "\n")
                stats.add_failure(failure)
    os.replace(metadata_tmp, os.path.join(out_dir, METADATA))
    os.replace(failures_tmp, os.path.join(out_dir, FAILURES))
    entries = dataset.close() if dataset is not None else None
    if mani is not None:
        mani.close()
    summary = stats.to_dict()
    write_json(os.path.join(out_dir, STATS), summary, indent=1)
    return summary, entries
