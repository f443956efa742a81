"""Corpus annotation: manifest -> decode (threads, one batch ahead) -> model -> writer threads.

Decoding of batch i+1 and writing of batch i-1 overlap the model on batch i. A pair that cannot be
read, or whose model call fails, is recorded in failures.jsonl and skipped; finished pairs are on
disk as soon as they are written, and a re-run completes only the missing ones.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

from sigma_fast.data.manifest import read_manifest
from sigma_fast.io.dataset import BenCoWriter
from sigma_fast.io.images import ImageLoadError, decode_image

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    annotated: int
    skipped_finished: int
    failed: int
    dataset_entries: int
    out_dir: str


def decode_pair(record):
    """-> (record, original, edited) or (record, failed path, reason)."""
    decoded = []
    for path in (record.original, record.edited):
        try:
            decoded.append(decode_image(path))
        except ImageLoadError as error:
            return record, path, error.reason
    return (record, *decoded)


def split_decoded(decoded):
    """`decode_pair` results -> (ready (record, original, edited, ...) tuples, (record, path, reason) failures)."""
    ready = [item for item in decoded if not isinstance(item[1], str)]
    failures = [item for item in decoded if isinstance(item[1], str)]
    return ready, failures


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def annotate_records(annotator, ready, writer):
    """Annotate decoded pairs in one model call; if that call fails, pair by pair, so one bad
    pair only costs itself."""
    records = [item[0] for item in ready]
    originals = [item[1] for item in ready]
    editeds = [item[2] for item in ready]
    try:
        annotations = annotator.annotate_images([o.pixels for o in originals], [e.pixels for e in editeds],
                                                [r.instruction for r in records])
    except (RuntimeError, ValueError) as error:
        if len(ready) == 1:
            log.warning("model failed on %s: %s", records[0].key, error)
            writer.fail(records[0].key, records[0].edited, f"model error: {error}")
            return 0
        return sum(annotate_records(annotator, [item], writer) for item in ready)
    for record, annotation, original, edited in zip(records, annotations, originals, editeds):
        writer.write(record, annotation, original, edited)
    return len(ready)


def annotate_manifest(annotator, manifest, out_dir, batch_size=16, workers=4, negatives=True, limit=None,
                      progress=True):
    """Annotate every pair of `manifest` into an IMDL-BenCo dataset in `out_dir`."""
    records, row_failures = read_manifest(manifest)
    if limit is not None:
        records = records[:limit]
    annotated = 0
    writer = BenCoWriter(out_dir, workers=max(1, workers // 2), negatives=negatives)
    try:
        for failure in row_failures:
            writer.fail(failure.key, failure.path, failure.reason)
        todo = [record for record in records if record.key not in writer.finished]
        skipped = len(records) - len(todo)
        bar = tqdm(total=len(todo), unit="pair", desc="annotate", disable=not progress)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigma-decode") as decoder:
            chunks = batches(todo, batch_size)
            pending = [decoder.submit(decode_pair, r) for r in next(chunks, [])]
            while pending:
                decoded = [future.result() for future in pending]
                pending = [decoder.submit(decode_pair, r) for r in next(chunks, [])]  # decode ahead
                ready, failures = split_decoded(decoded)
                for record, path, reason in failures:
                    writer.fail(record.key, path, reason)
                if ready:
                    annotated += annotate_records(annotator, ready, writer)
                bar.update(len(decoded))
                bar.set_postfix(failed=writer.failure_count)
        bar.close()
    finally:
        entries = writer.close()  # also on Ctrl-C: dataset.json lists everything finished so far
    return RunSummary(annotated, skipped, writer.failure_count, entries, writer.out_dir)
