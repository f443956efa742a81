"""Ray Data scale-out (extra `sigma_fast[ray]`): the corpus run over a Ray cluster, and annotation of
any Ray Dataset of encoded image pairs.

- `annotate_corpus_ray(make_annotator, corpus, out_dir, ...)` (`sigma-fast annotate --ray`): the
  driver counts the corpus (files whose row count is not in their metadata, such as tar shards, are
  counted by Ray tasks: a local uncompressed tar from its member headers alone, so its images are
  read once, by the actor annotating them; a compressed or remote tar by one more read), prepares
  OUT exactly as the single-process run does, and hands the shards still to do to a pool of
  `ShardAnnotator` actors (one per GPU, `num_gpus=1`). An actor reads its
  shard's rows with the project's own readers and runs the single-process stages on them
  (`sigma_fast.pipeline.run_shards`: decode ahead, model, writer committing the shard with its done
  record); the driver merges with `finish_run`. So the
  output has the layout, bytes and resume rules of `sigma_fast.pipeline.annotate_corpus`. OUT must
  be on storage every node sees.
- `read_corpus(input, format=None, limit=None) -> ray.data.Dataset`: a corpus as byte rows
  (`index, key, original, edited, instruction, mask, meta` JSON, `reason` for a row that could not
  be read), read in parallel by range with the same readers, so keys, indices and failures are those
  of `open_corpus`. (`ray.data.read_parquet` gives no row positions, which the `{file}/{row}` keys
  and the corpus index need, and raises on a file that is not parquet instead of recording it.)
- `annotate_dataset(ds, make_annotator=None, ...) -> ray.data.Dataset`: `map_batches` over
  `PairAnnotator` actors; rows with `original`, `edited` (encoded bytes) and `instruction` come back
  with the PNG mask, score, parsed edit and quality flags, every other column passed through.

A pair's mask does not depend on the batch it ran in (the Annotator pads every batch), so any
split of rows between actors gives the same masks.
"""
import contextlib
import importlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import ray

from sigma_fast.io.corpora import Corpus, PairRecord, RowFailure
from sigma_fast.io.decode import PairDecoder
from sigma_fast.io.messages import one_line
from sigma_fast.io.writers import quality
from sigma_fast.io.writers.benco import png_bytes
from sigma_fast.io.writers.output import finish_run
from sigma_fast.io.writers.shards import prepare_output
from sigma_fast.pipeline import (WRITER_CHOICES, RunSummary, ShardPlan, annotate_ready, progress_bar,
                                 run_settings, run_shards, writer_options)

FAR = 2 ** 62  # a row number past any corpus: a reader skipping to it only counts
BYTE_COLUMNS = ("original", "edited", "mask")


def annotator_factory(checkpoint=None, **options):
    """A picklable zero-argument callable building `Annotator.from_pretrained(checkpoint, **options)`
    inside each actor (on the actor's GPU when `device` is left to default)."""
    from sigma_fast.annotate import Annotator

    return partial(Annotator.from_pretrained, checkpoint, **options)


@dataclass
class CorpusPlan:
    """A corpus with every source's row count known: rows [start, stop) can be read anywhere
    without reading the sources before them."""
    format: str
    sources: list
    counts: list
    total: int

    def records(self, start=0, stop=None):
        """PairRecord | RowFailure with corpus index in [start, stop), in corpus order (as
        `Corpus.records`, which `sigma_fast.pipeline.run_shards` reads through)."""
        stop = self.total if stop is None else min(stop, self.total)
        offset, first, files = 0, None, []
        for source, rows in zip(self.sources, self.counts):
            if offset < stop and offset + rows > start:
                first = offset if first is None else first
                files.append(source)
            offset += rows
        if not files:
            return
        with contextlib.closing(Corpus(self.format, files).records(start - first)) as rows:
            for item in rows:
                item.index += first
                if item.index >= stop:
                    return
                yield item


def _count_rows(format, source):
    # a source's row count; where the metadata does not tell, a reader pass skipping every row
    module = importlib.import_module(f"sigma_fast.io.corpora.{format}")
    known = module.count(source)
    if known is not None:
        return known
    rows = module.read(source, FAR)
    while True:
        try:
            next(rows)
        except StopIteration as stop:
            return stop.value


def plan_corpus(corpus):
    """`corpus` (an `open_corpus` result) -> CorpusPlan; uncounted sources are counted by Ray tasks."""
    module = importlib.import_module(f"sigma_fast.io.corpora.{corpus.format}")
    counts = [module.count(source) for source in corpus.sources]
    unknown = [position for position, rows in enumerate(counts) if rows is None]
    count_task = ray.remote(num_cpus=1)(_count_rows)
    counted = ray.get([count_task.remote(corpus.format, corpus.sources[position]) for position in unknown])
    for position, rows in zip(unknown, counted):
        counts[position] = rows
    total = sum(counts) if corpus.limit is None else min(sum(counts), corpus.limit)
    return CorpusPlan(corpus.format, list(corpus.sources), counts, total)


class ShardAnnotator:
    """Ray Data actor: each row `{shard}` -> the shard read, annotated with the overlapped stages of
    `sigma_fast.pipeline.run_shards` and committed under OUT; returns its row counts."""

    def __init__(self, make_annotator, corpus, out_dir, plan, options, workers=4):
        # corpus: a CorpusPlan; plan: the driver's ShardPlan; options: writer_options' arguments
        self.annotator = make_annotator()
        self.corpus, self.out_dir, self.plan, self.workers = corpus, out_dir, plan, workers
        self.options = writer_options(*options, batch_size=self.annotator.batch_size)

    def __call__(self, batch):
        # batch: {"shard": (n,) int} -> {"shard", "annotated", "failed": (n,) int}
        counts = [run_shards(self.annotator, self.corpus, self.out_dir, self.plan, [int(shard)], self.options,
                             self.workers) for shard in batch["shard"]]
        return {"shard": np.asarray(batch["shard"], dtype=np.int64),
                "annotated": np.array([count.annotated for count in counts], dtype=np.int64),
                "failed": np.array([count.failed for count in counts], dtype=np.int64)}


def _cluster_resources(num_gpus, concurrency):
    # one actor per GPU when the cluster has GPUs, else one CPU actor
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1 if gpus else 0
    if concurrency is None:
        concurrency = max(1, gpus // num_gpus) if num_gpus else 1
    if num_gpus < 0 or concurrency < 1:
        raise ValueError(f"num_gpus must be >= 0 and concurrency >= 1, got {num_gpus} and {concurrency}")
    return num_gpus, concurrency


def _settings(make_annotator, format, sources, out_dir, *options):
    # run.json's settings, measured on an annotator built where the actors' are (their device, dtype)
    return run_settings(make_annotator(), Corpus(format, sources), out_dir, *options)


def annotate_corpus_ray(make_annotator, corpus, out_dir, shard_size=1000, writer="benco", workers=4, negatives=True,
                        manidataset=False, min_score=None, drop_regenerated=False, overwrite=False, progress=True,
                        num_gpus=None, concurrency=None):
    """`sigma_fast.pipeline.annotate_corpus` on the connected Ray cluster (`ray.init()` first, else a
    local one starts): same arguments except `make_annotator` (a picklable zero-argument callable,
    see `annotator_factory`) for the annotator, `num_gpus` per actor (default 1 when the cluster has
    GPUs, else 0) and `concurrency` actors (default one per GPU, else 1). Same output bytes and
    resume rules; -> RunSummary."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if writer not in WRITER_CHOICES:
        raise ValueError(f"writer must be one of {sorted(WRITER_CHOICES)}, got {writer!r}")
    writers = WRITER_CHOICES[writer]
    out_dir = os.path.abspath(out_dir)
    num_gpus, concurrency = _cluster_resources(num_gpus, concurrency)
    settings_task = ray.remote(num_cpus=0 if num_gpus else 1, num_gpus=num_gpus)(_settings)
    settings = settings_task.remote(make_annotator, corpus.format, corpus.sources, out_dir, shard_size, writers,
                                    negatives, manidataset, min_score, drop_regenerated)
    rows = plan_corpus(corpus)  # while the settings task loads the model
    prepare_output(out_dir, ray.get(settings), overwrite)
    plan = ShardPlan(out_dir, shard_size, rows.total)
    shards = math.ceil(rows.total / shard_size)
    todo = [shard for shard in range(shards) if not plan.is_done(shard)]
    skipped, annotated, failed = plan.finished_rows(), 0, 0
    bar = progress_bar(rows.total, skipped, progress)
    try:
        if todo:
            results = ray.data.from_items([{"shard": shard} for shard in todo], override_num_blocks=len(todo))
            results = results.map_batches(
                ShardAnnotator, batch_size=1, batch_format="numpy", num_gpus=num_gpus, concurrency=concurrency,
                fn_constructor_args=(make_annotator, rows, out_dir, plan, (writers, min_score, drop_regenerated),
                                     workers))
            for done in results.iter_rows():
                annotated, failed = annotated + int(done["annotated"]), failed + int(done["failed"])
                bar.update(int(done["annotated"]) + int(done["failed"]))
                bar.set_postfix(failed=failed, refresh=False)
    finally:
        bar.close()
    stats, entries = finish_run(out_dir, shards, writers, negatives, manidataset)
    return RunSummary(stats["rows"], annotated, skipped, failed, stats["kept"], stats["filtered"], shards,
                      entries or 0, out_dir)


def _byte_row(item):
    # PairRecord | RowFailure -> one row of `read_corpus` (a fixed set of columns for every row)
    if isinstance(item, RowFailure):
        return {"index": item.index, "key": item.key, "original": None, "edited": None, "instruction": None,
                "mask": None, "meta": json.dumps({"source": item.source}), "reason": item.reason}
    return {"index": item.index, "key": item.key, "original": item.original, "edited": item.edited,
            "instruction": item.instruction, "mask": item.mask, "meta": json.dumps(item.meta, sort_keys=True),
            "reason": None}


def read_corpus(input, format=None, limit=None, rows_per_task=256):
    """A corpus (what `open_corpus` takes) as a Ray Dataset of byte rows, in corpus order, read by
    Ray tasks `rows_per_task` rows at a time."""
    from sigma_fast.io.corpora import open_corpus

    if rows_per_task < 1:
        raise ValueError(f"rows_per_task must be at least 1, got {rows_per_task}")
    plan = plan_corpus(open_corpus(input, format=format, limit=limit))
    ranges = [{"start": start, "stop": min(start + rows_per_task, plan.total)}
              for start in range(0, plan.total, rows_per_task)]
    if not ranges:
        raise ValueError(f"the corpus {input!r} has no rows")

    def read_range(task):
        return [_byte_row(item) for item in plan.records(int(task["start"]), int(task["stop"]))]

    return ray.data.from_items(ranges, override_num_blocks=len(ranges)).flat_map(read_range)


class PairAnnotator:
    """Ray Data actor: a batch of byte rows -> the same rows without their image bytes, plus `mask`
    (PNG bytes), `score`, `edit` (JSON), `height`, `width`, `mask_fraction`, `changed_outside`,
    `regenerated` and `reason` (None, or why the pair has no mask; its result columns are then null)."""

    def __init__(self, make_annotator, workers=4):
        self.annotator = make_annotator()
        self.decoder = PairDecoder(self.annotator.device, workers=workers)

    def __call__(self, batch):
        # batch: {column: (n,) array}, at least original, edited, instruction -> {column: (n,) list}
        if {"original", "edited", "instruction"} - set(batch):
            raise ValueError("annotate_dataset needs columns 'original', 'edited' and 'instruction'")
        count = len(batch["instruction"])
        reasons = batch.get("reason", [None] * count)
        keys = batch.get("key", [str(position) for position in range(count)])
        # an all-null column may arrive as NaNs: only a string is a reason
        rows = [RowFailure(position, str(keys[position]), "", str(reasons[position]))
                if isinstance(reasons[position], str) else
                PairRecord(position, str(keys[position]), batch["original"][position], batch["edited"][position],
                           batch["instruction"][position])
                for position in range(count)]
        out = {name: list(values) for name, values in batch.items() if name not in BYTE_COLUMNS}
        results = [self._columns(pair, result) for start in range(0, count, self.annotator.batch_size)
                   for pair, result in self._annotate(rows[start:start + self.annotator.batch_size])]
        for name in results[0] if results else ():
            out[name] = [result[name] for result in results]
        return out

    def _annotate(self, rows):
        # -> (decoded pair or None, Annotation or reason str) per row, one model call
        decoded = iter(self.decoder.decode([row for row in rows if isinstance(row, PairRecord)]))
        decoded = [next(decoded) if isinstance(row, PairRecord) else row.reason for row in rows]
        ready = [(row, *pair) for row, pair in zip(rows, decoded) if isinstance(pair, tuple)]
        results = iter(annotate_ready(self.annotator, ready) if ready else [])
        return [(pair, next(results)) if isinstance(pair, tuple) else (None, pair) for pair in decoded]

    @staticmethod
    def _columns(pair, result):
        if isinstance(result, str):
            return {"mask": None, "score": None, "edit": None, "height": None, "width": None, "mask_fraction": None,
                    "changed_outside": None, "regenerated": None, "reason": one_line(result)}
        change = quality.changed_outside(pair[0].pixels, pair[1].pixels, result.mask)
        return {"mask": png_bytes(result.mask), "score": round(float(result.score), 6),
                "edit": json.dumps(result.edit.to_dict(), sort_keys=True), "height": int(result.mask.shape[0]),
                "width": int(result.mask.shape[1]), "mask_fraction": round(float((result.mask > 0).mean()), 6),
                "changed_outside": change, "regenerated": quality.is_regenerated(change), "reason": None}


def annotate_dataset(ds, make_annotator=None, batch_size=16, num_gpus=None, concurrency=None, workers=4):
    """`ds` (rows with `original`, `edited` encoded image bytes and `instruction`; optional `key`,
    `reason`) -> a lazy Dataset of annotated rows (see PairAnnotator), `map_batches` over actors
    (one per GPU with `num_gpus=1`; CPU actors when the cluster has no GPU). `make_annotator`
    defaults to the default checkpoint (`annotator_factory()`) with the Annotator's batch size
    `batch_size`, which is also the rows per actor call."""
    make_annotator = make_annotator or annotator_factory(batch_size=batch_size)
    num_gpus, concurrency = _cluster_resources(num_gpus, concurrency)
    return ds.map_batches(PairAnnotator, batch_size=batch_size, batch_format="numpy", num_gpus=num_gpus,
                          concurrency=concurrency, fn_constructor_args=(make_annotator, workers))


__all__ = ["CorpusPlan", "PairAnnotator", "ShardAnnotator", "annotate_corpus_ray", "annotate_dataset",
           "annotator_factory", "plan_corpus", "read_corpus"]
