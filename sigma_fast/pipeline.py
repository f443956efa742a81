"""Corpus annotation as overlapped stages joined by bounded queues:

    reader thread (rows -> batches, decode submitted to a thread pool: one or two batches ahead)
    -> model, on the calling thread (Annotator: preprocess, CUDA graph, postprocess on the device;
       only uint8 masks and scores go to pinned host buffers, copied asynchronously)
    -> writer thread (waits for each batch's copy event, hands PNG encoding and file writes to a
       thread pool, commits shards).

Rows are read in corpus order and cut into shards of `shard_size` rows (shard s = rows with index
in [s*S, (s+1)*S)); see `sigma_fast.io.writers.shards` for the protocol that makes a run
resumable and its output byte-identical to an uninterrupted one. Every batch holds `batch_size`
pairs except a shard's last (the Annotator pads it), and a pair whose batch fails in the model is
retried alone (padded too), so a pair's mask never depends on its batch-mates. A row that cannot be
read, decoded, annotated or written is recorded in its shard's failures and skipped; nothing stops
the run. `devices=` runs the same stages in one worker process per device (`sigma_fast.workers`).
"""
import itertools
import logging
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

from sigma_fast.grounding import parse_instruction
from sigma_fast.io.corpora import PairRecord, open_corpus
from sigma_fast.io.decode import PairDecoder, choose_backend
from sigma_fast.io.writers.output import WRITERS, ShardWriter, finish_run
from sigma_fast.io.writers.quality import REGENERATED_LEVEL
from sigma_fast.io.writers.shards import done_shards, model_hash, prepare_output, relative_to

log = logging.getLogger(__name__)
WRITER_CHOICES = {"benco": ("benco",), "webdataset": ("webdataset",), "both": WRITERS}
AHEAD = 2  # batches decoded ahead of the model, and batches waiting for their copies and writes


@dataclass
class RunSummary:
    rows: int  # every row of the run, failures included
    annotated: int  # pairs annotated by this run
    skipped_finished: int  # rows in shards a previous run completed
    failed: int  # rows skipped by this run
    kept: int  # pairs in the output (all shards)
    filtered: int
    shards: int
    dataset_entries: int  # dataset.json entries, 0 without the benco writer
    out_dir: str


class Finished:
    """Results already on the host, with the `result()` of a pending batch."""

    def __init__(self, results):
        self.results = results

    def result(self):
        return self.results


class Joined:
    """Several pending batches' results, in order."""

    def __init__(self, parts):
        self.parts = parts

    def result(self):
        return [result for part in self.parts for result in part.result()]


def submit_ready(annotator, ready, probs=None):
    """[(record, original, edited)] -> pending results (`.result()` -> [Annotation or model-error
    reason]): one model call; if it fails, pair by pair (each call still padded to the batch size),
    so a bad pair costs only itself. The copies to the host are left in flight."""
    try:
        return annotator.submit_images([o.pixels for _, o, _ in ready], [e.pixels for _, _, e in ready],
                                       [r.instruction for r, _, _ in ready], probs=probs)
    except (RuntimeError, ValueError) as error:
        if len(ready) == 1:
            log.warning("model failed on %s: %s", ready[0][0].key, error)
            return Finished([f"model error: {error}"])
        return Joined([submit_ready(annotator, [item], probs) for item in ready])


def annotate_ready(annotator, ready):
    """`submit_ready`, waited for: [Annotation or model-error reason]."""
    return submit_ready(annotator, ready).result()


def parser_name(parser):
    """"rules", or the LLM parser's model id (its class name when built around a model object)."""
    if parser is parse_instruction:
        return "rules"
    return getattr(parser, "model_id", None) or type(parser).__name__


def run_settings(annotator, corpus, out_dir, shard_size, writers, negatives, manidataset, min_score,
                 drop_regenerated):
    """What decides the output's bytes; stored in run.json and compared on a re-run."""
    from sigma_fast import __version__

    return {
        "version": __version__, "checkpoint_sha256": model_hash(annotator.model),
        "threshold": float(annotator.threshold), "prior": annotator.prior_mode,
        "grounding": annotator.grounding, "parser": parser_name(annotator.parser),
        "image_size": annotator.image_size,
        "precision": annotator.precision, "device": annotator.device.type, "batch_size": annotator.batch_size,
        "decoder": choose_backend(annotator.device)[0],  # GPU decoders may differ from PIL by a few levels
        "shard_size": shard_size, "writers": list(writers), "negatives": negatives, "manidataset": manidataset,
        "min_score": min_score, "drop_regenerated": drop_regenerated, "regenerated_level": REGENERATED_LEVEL,
        "format": corpus.format, "sources": [relative_to(out_dir, source) for source in corpus.sources],
    }


class ShardPlan:
    """Which shards a previous run completed, for a corpus of `total` rows (None: not known cheaply)."""

    def __init__(self, out_dir, shard_size, total):
        self.done, self.shard_size, self.total = done_shards(out_dir), shard_size, total

    def past_end(self, shard):
        return self.total is not None and shard * self.shard_size >= self.total

    def is_done(self, shard):
        # a short shard is complete only where this run's rows also end in it, at the same count
        rows = self.done.get(shard, {}).get("rows")
        return rows == self.shard_size or (rows is not None and self.total is not None
                                           and shard * self.shard_size + rows == self.total)

    def rows(self, shard):
        return self.done[shard]["rows"]

    def finished_rows(self):
        """Rows in the completed shards inside the corpus: where the progress bar starts."""
        return sum(self.rows(shard) for shard in self.done if self.is_done(shard) and not self.past_end(shard))


class ShardRows:
    """The rows of the shards asked for, in increasing order; one stream is kept open while the
    shards follow each other, and reopened at a shard's first row after a gap."""

    def __init__(self, corpus, shard_size):
        self.corpus, self.shard_size = corpus, shard_size
        self.stream, self.peeked, self.position = None, None, None

    def rows(self, shard):
        start, end = shard * self.shard_size, (shard + 1) * self.shard_size
        if self.position != start:
            self.close()
            self.stream = self.corpus.records(start)
        self.position = None  # unknown until this shard is read to its end
        while True:
            row, self.peeked = (self.peeked if self.peeked is not None else next(self.stream, None)), None
            if row is None:
                return
            if row.index >= end:
                self.peeked, self.position = row, end
                return
            yield row

    def close(self):
        if self.stream is not None:
            self.stream.close()
        self.stream, self.peeked, self.position = None, None, None


class Stop(Exception):
    """Another stage failed: this one stops too."""


class Channel:
    """A bounded queue between two stages that gives up (Stop) once any stage has failed."""

    def __init__(self, size, failed):
        self.queue, self.failed = queue.Queue(size), failed

    def put(self, item):
        while not self.failed.is_set():
            try:
                return self.queue.put(item, timeout=0.1)
            except queue.Full:
                pass
        raise Stop

    def get(self):
        while not self.failed.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        raise Stop


@dataclass
class Batch:
    shard: int
    rows: list  # PairRecord | RowFailure, in corpus order
    decoding: Future  # of `decode_rows`' result


@dataclass
class ShardEnd:
    shard: int


END = object()  # the reader found the corpus's end (or the last shard asked for)


@dataclass
class ShardCounts:
    annotated: int = 0
    failed: int = 0
    skipped: int = 0  # rows in shards a previous run completed
    end: int = 0  # the first shard past the corpus's end (or past the shards asked for)


def run_shards(annotator, corpus, out_dir, plan, shards, writer_options, workers=4, progress=None):
    """Annotate the shards `shards` yields (increasing; completed ones are skipped) with the
    overlapped stages; stops at the corpus's end. `progress(rows)` is called as rows are written.
    -> ShardCounts. Shards are committed as they complete; nothing is merged here."""
    counts, failed, errors = ShardCounts(), threading.Event(), []
    decoded, annotated = Channel(AHEAD, failed), Channel(AHEAD, failed)
    progress = progress or (lambda rows: None)

    def stage(target, *args):
        try:
            target(*args)
        except Stop:
            pass
        except BaseException as error:  # re-raised on the calling thread
            errors.append(error)
            failed.set()

    # one decode thread drives the PairDecoder (DALI pipelines are not re-entrant); its `workers`
    # threads decode what goes to PIL
    with PairDecoder(annotator.device, workers=workers) as decoder, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sigma-decode") as decode_pool, \
            ThreadPoolExecutor(max_workers=max(1, workers // 2), thread_name_prefix="sigma-writer") as writer_pool:
        threads = [threading.Thread(target=stage, args=args, daemon=True, name=name) for name, args in (
            ("sigma-reader", (read_batches, corpus, plan, shards, annotator.batch_size, decode_pool, decoder, decoded,
                              counts)),
            ("sigma-writer", (write_batches, annotated, out_dir, writer_pool, writer_options, progress, counts)))]
        for thread in threads:
            thread.start()
        stage(run_model, annotator, decoded, annotated)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return counts


def read_batches(corpus, plan, shards, batch_size, pool, decoder, channel, counts):
    """Reader stage: rows -> Batch (decoding submitted) and ShardEnd markers, then END."""
    reader = ShardRows(corpus, plan.shard_size)
    try:
        for shard in shards:
            counts.end = shard
            if plan.past_end(shard):
                break
            if plan.is_done(shard):
                counts.skipped += plan.rows(shard)
                continue
            chunk, seen = [], False
            for row in reader.rows(shard):
                seen = True
                chunk.append(row)
                if sum(isinstance(item, PairRecord) for item in chunk) == batch_size:
                    channel.put(decode_batch(pool, decoder, shard, chunk))
                    chunk = []
            if not seen:
                break
            if chunk:
                channel.put(decode_batch(pool, decoder, shard, chunk))
            channel.put(ShardEnd(shard))
            counts.end = shard + 1
    finally:
        reader.close()
    channel.put(END)


def decode_batch(pool, decoder, shard, rows):
    return Batch(shard, rows, pool.submit(decode_rows, decoder, rows))


def decode_rows(decoder, rows):
    """Per row: `PairDecoder` result ((original, edited) or a reason), None for a RowFailure."""
    results = iter(decoder.decode([row for row in rows if isinstance(row, PairRecord)]))
    return [next(results) if isinstance(row, PairRecord) else None for row in rows]


def run_model(annotator, decoded, annotated):
    """Model stage: Batch -> (Batch, decoded pairs, pending results); markers pass through."""
    while True:
        item = decoded.get()
        if isinstance(item, Batch):
            pairs = item.decoding.result()
            ready = [(row, *pair) for row, pair in zip(item.rows, pairs) if isinstance(pair, tuple)]
            item = (item, pairs, submit_ready(annotator, ready) if ready else Finished([]))
        annotated.put(item)
        if item is END:
            return


def write_batches(channel, out_dir, pool, options, progress, counts):
    """Writer stage: waits for each batch's results, writes them into its shard, commits shards."""
    writer = None
    while True:
        item = channel.get()
        if item is END:
            return
        if isinstance(item, ShardEnd):
            writer.close()
            writer = None
            continue
        batch, pairs, pending = item
        if writer is None:
            writer = ShardWriter(out_dir, batch.shard, pool, **options)
        results = iter(pending.result())
        for row, pair in zip(batch.rows, pairs):
            if not isinstance(row, PairRecord):
                writer.fail(row.index, row.key, row.source, row.reason)
                counts.failed += 1
                continue
            result = pair if isinstance(pair, str) else next(results)
            if isinstance(result, str):
                writer.fail(row.index, row.key, row.meta.get("source", ""), result)
                counts.failed += 1
            else:
                writer.add(row, result, *pair)
                counts.annotated += 1
        progress(len(batch.rows))


def writer_options(writers, min_score, drop_regenerated, batch_size):
    """ShardWriter's keyword arguments for a run."""
    return {"writers": writers, "min_score": min_score, "drop_regenerated": drop_regenerated,
            "window": 4 * batch_size}


def progress_bar(total, initial, progress):
    """The run's bar: pairs/s and ETA, starting at the rows earlier runs completed."""
    return tqdm(total=total, initial=initial, unit="pair", desc="annotate", disable=not progress, dynamic_ncols=True,
                smoothing=0.1)


def annotate_corpus(annotator, corpus, out_dir, shard_size=1000, writer="benco", workers=4, negatives=True,
                    manidataset=False, min_score=None, drop_regenerated=False, overwrite=False, progress=True,
                    devices=None):
    """Annotate `corpus` (an `open_corpus` result) into `out_dir`; resumes a folder written with the
    same settings, refuses one written with others (ValueError) unless `overwrite`. `devices`
    ("all", "0,1", ["cuda:0", "cuda:1"], "cpu,cpu", ...: see `sigma_fast.workers.parse_devices`)
    runs one worker process per device, each a copy of `annotator` there, with the same output."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if writer not in WRITER_CHOICES:
        raise ValueError(f"writer must be one of {sorted(WRITER_CHOICES)}, got {writer!r}")
    from sigma_fast import workers as worker_processes

    targets = None if devices is None else worker_processes.parse_devices(devices)
    if targets is not None and targets == [annotator.device]:
        targets = None  # one device, the annotator's own: no worker process needed
    # checked before OUT is touched: what cannot be rebuilt on another device is refused here
    recipe = None if targets is None else worker_processes.AnnotatorRecipe(annotator)
    writers = WRITER_CHOICES[writer]
    out_dir = os.path.abspath(out_dir)
    prepare_output(out_dir, run_settings(annotator, corpus, out_dir, shard_size, writers, negatives, manidataset,
                                         min_score, drop_regenerated), overwrite)
    plan = ShardPlan(out_dir, shard_size, corpus.total())
    options = writer_options(writers, min_score, drop_regenerated, annotator.batch_size)
    bar = progress_bar(plan.total, plan.finished_rows(), progress)
    try:
        if targets is None:
            counts = run_shards(annotator, corpus, out_dir, plan, itertools.count(), options, workers,
                                lambda rows: bar.update(rows))
        else:
            counts = worker_processes.run_on_devices(recipe, corpus, out_dir, plan, options, workers, targets,
                                                     lambda rows: bar.update(rows))
    finally:
        bar.close()
    stats, entries = finish_run(out_dir, counts.end, writers, negatives, manidataset)
    return RunSummary(stats["rows"], counts.annotated, counts.skipped, counts.failed, stats["kept"],
                      stats["filtered"], counts.end, entries or 0, out_dir)


def annotate_manifest(annotator, manifest, out_dir, limit=None, **options):
    """`annotate_corpus` on a JSONL/CSV manifest of local files."""
    return annotate_corpus(annotator, open_corpus(manifest, format="manifest", limit=limit), out_dir, **options)
