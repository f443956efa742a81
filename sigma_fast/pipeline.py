"""Corpus annotation: reader -> decode threads (one batch ahead) -> Annotator -> shard writers.

Rows are read in corpus order and cut into shards of `shard_size` rows (shard s = rows with index
in [s*S, (s+1)*S)); see `sigma_fast.io.writers.shards` for the protocol that makes a run
resumable and its output byte-identical to an uninterrupted one. Decoding of batch i+1 and the
writers' PNG encoding overlap the model on batch i. Every batch holds `batch_size` pairs except a
shard's last (the Annotator pads it), and a pair whose batch fails in the model is retried alone
(padded too), so a pair's mask never depends on its batch-mates. A row that cannot be read,
decoded, annotated or written is recorded in its shard's failures and skipped; nothing stops the run.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image
from tqdm.auto import tqdm

from sigma_fast.io.corpora import PairRecord, open_corpus
from sigma_fast.io.images import ImageLoadError, decode_image
from sigma_fast.io.writers.names import image_format
from sigma_fast.io.writers.output import WRITERS, ShardWriter, finish_run
from sigma_fast.io.writers.quality import REGENERATED_LEVEL
from sigma_fast.io.writers.shards import done_shards, model_hash, prepare_output, relative_to

log = logging.getLogger(__name__)
WRITER_CHOICES = {"benco": ("benco",), "webdataset": ("webdataset",), "both": WRITERS}


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


def decode_record(record):
    """-> (original, edited) DecodedImages, or a one-line reason. A header larger than PIL's
    MAX_IMAGE_PIXELS (a decompression bomb) is refused before anything is decoded."""
    decoded = []
    for role, data in (("original", record.original), ("edited", record.edited)):
        try:
            _, _, (width, height) = image_format(data)
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                return f"{role} image: {width}x{height} pixels is over the decompression-bomb limit"
            decoded.append(decode_image(data))
        except ImageLoadError as error:
            return f"{role} image: {error.reason}"
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return f"{role} image: not a readable image ({error})"
    return tuple(decoded)


def annotate_ready(annotator, ready):
    """[(record, original, edited)] -> [Annotation or model-error reason], one model call; if it
    fails, pair by pair (each call still padded to the batch size), so a bad pair costs only itself."""
    try:
        return annotator.annotate_images([o.pixels for _, o, _ in ready], [e.pixels for _, _, e in ready],
                                         [r.instruction for r, _, _ in ready])
    except (RuntimeError, ValueError) as error:
        if len(ready) == 1:
            log.warning("model failed on %s: %s", ready[0][0].key, error)
            return [f"model error: {error}"]
        return [result for item in ready for result in annotate_ready(annotator, [item])]


def run_settings(annotator, corpus, out_dir, shard_size, writers, negatives, manidataset, min_score,
                 drop_regenerated):
    """What decides the output's bytes; stored in run.json and compared on a re-run."""
    from sigma_fast import __version__

    return {
        "version": __version__, "checkpoint_sha256": model_hash(annotator.model),
        "threshold": float(annotator.threshold), "prior": annotator.prior_mode, "image_size": annotator.image_size,
        "precision": annotator.precision, "device": annotator.device.type, "batch_size": annotator.batch_size,
        "shard_size": shard_size, "writers": list(writers), "negatives": negatives, "manidataset": manidataset,
        "min_score": min_score, "drop_regenerated": drop_regenerated, "regenerated_level": REGENERATED_LEVEL,
        "format": corpus.format, "sources": [relative_to(out_dir, source) for source in corpus.sources],
    }


class Run:
    """One corpus run's loop state: the shard being written and the batch decoded ahead."""

    def __init__(self, annotator, out_dir, shard_size, decoder, writer_pool, writer_options, bar):
        self.annotator, self.out_dir, self.shard_size = annotator, out_dir, shard_size
        self.decoder, self.writer_pool, self.writer_options, self.bar = decoder, writer_pool, writer_options, bar
        self.shard = None  # ShardWriter
        self.chunk = []  # rows of the current shard not yet submitted
        self.ahead = None  # (ShardWriter, rows, decode futures) of the batch decoded ahead
        self.annotated = self.failed = 0

    def add(self, row):
        shard = row.index // self.shard_size
        if self.shard is None or shard != self.shard.shard:
            self.close_shard()
            self.shard = ShardWriter(self.out_dir, shard, self.writer_pool, **self.writer_options)
        self.chunk.append(row)
        if sum(isinstance(item, PairRecord) for item in self.chunk) == self.annotator.batch_size:
            self.submit()

    def submit(self):
        futures = [self.decoder.submit(decode_record, row) if isinstance(row, PairRecord) else None
                   for row in self.chunk]
        batch, self.ahead, self.chunk = self.ahead, (self.shard, self.chunk, futures), []
        if batch is not None:
            self.run(*batch)

    def run(self, writer, rows, futures):
        decoded = [future.result() if future is not None else None for future in futures]
        ready = [(row, *pair) for row, pair in zip(rows, decoded) if isinstance(pair, tuple)]
        results = iter(annotate_ready(self.annotator, ready) if ready else [])
        for row, pair in zip(rows, decoded):
            if not isinstance(row, PairRecord):
                writer.fail(row.index, row.key, row.source, row.reason)
                self.failed += 1
                continue
            result = pair if isinstance(pair, str) else next(results)
            if isinstance(result, str):
                writer.fail(row.index, row.key, row.meta.get("source", ""), result)
                self.failed += 1
            else:
                writer.add(row, result, *pair)
                self.annotated += 1
        self.bar.update(len(rows))
        self.bar.set_postfix(failed=self.failed, refresh=False)

    def close_shard(self):
        """Run what is queued and commit the current shard."""
        if self.chunk:
            self.submit()
        if self.ahead is not None:
            batch, self.ahead = self.ahead, None
            self.run(*batch)
        if self.shard is not None:
            self.shard.close()
            self.shard = None


def annotate_corpus(annotator, corpus, out_dir, shard_size=1000, writer="benco", workers=4, negatives=True,
                    manidataset=False, min_score=None, drop_regenerated=False, overwrite=False, progress=True):
    """Annotate `corpus` (an `open_corpus` result) into `out_dir`; resumes a folder written with the
    same settings, refuses one written with others (ValueError) unless `overwrite`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if writer not in WRITER_CHOICES:
        raise ValueError(f"writer must be one of {sorted(WRITER_CHOICES)}, got {writer!r}")
    writers = WRITER_CHOICES[writer]
    out_dir = os.path.abspath(out_dir)
    prepare_output(out_dir, run_settings(annotator, corpus, out_dir, shard_size, writers, negatives, manidataset,
                                         min_score, drop_regenerated), overwrite)
    done, total = done_shards(out_dir), corpus.total()

    def is_done(shard):
        # a short shard is complete only where this run's rows also end in it, at the same count
        rows = done.get(shard, {}).get("rows")
        return rows == shard_size or (rows is not None and total is not None and shard * shard_size + rows == total)

    bar = tqdm(total=total, unit="pair", desc="annotate", disable=not progress, dynamic_ncols=True)
    options = {"writers": writers, "min_score": min_score, "drop_regenerated": drop_regenerated,
               "window": 4 * annotator.batch_size}
    skipped, shard = 0, 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigma-decode") as decoder, \
            ThreadPoolExecutor(max_workers=max(1, workers // 2), thread_name_prefix="sigma-writer") as writer_pool:
        run = Run(annotator, out_dir, shard_size, decoder, writer_pool, options, bar)
        while total is None or shard * shard_size < total:
            while is_done(shard):
                skipped += done[shard]["rows"]
                bar.update(done[shard]["rows"])
                shard += 1
            if total is not None and shard * shard_size >= total:
                break
            rows = corpus.records(shard * shard_size)
            ended = True
            for row in rows:
                if row.index // shard_size != shard and is_done(row.index // shard_size):
                    ended = False  # the next shard is complete: skip ahead without reading it
                    break
                shard = row.index // shard_size
                run.add(row)
            rows.close()
            if run.shard is not None:
                run.close_shard()
                shard += 1
            if ended:
                break
    bar.close()
    stats, entries = finish_run(out_dir, shard, writers, negatives, manidataset)
    return RunSummary(stats["rows"], run.annotated, skipped, run.failed, stats["kept"], stats["filtered"], shard,
                      entries or 0, out_dir)


def annotate_manifest(annotator, manifest, out_dir, limit=None, **options):
    """`annotate_corpus` on a JSONL/CSV manifest of local files."""
    return annotate_corpus(annotator, open_corpus(manifest, format="manifest", limit=limit), out_dir, **options)
