"""Readers for the public image-editing corpora, all yielding `PairRecord`s (encoded bytes, never
decoded here) or `RowFailure`s in one deterministic order: sources sorted by name, rows in file
order, every row counted. `open_corpus(input, format=None)` is the entry point."""
import importlib
from typing import Optional

from sigma_fast.io.corpora import sources as _sources
from sigma_fast.io.corpora.record import PairRecord, RowFailure

FORMATS = ("manifest", "magicbrush", "instructpix2pix", "ultraedit", "anyedit", "omniedit",
           "hqedit", "folder", "webdataset")
PARQUET_FORMATS = ("magicbrush", "instructpix2pix", "ultraedit", "anyedit", "omniedit", "hqedit")
# benchmarks with ground-truth masks, read only when named (format=...): never detected, and the
# single-image ones carry original=None (see sigma_fast.io.corpora.benchmark), so they are no annotate input
BENCHMARK_FORMATS = ("autosplice", "cocoglide", "sid_set", "opensdi", "benco_json", "benco_mani")


def _reader(format):
    # each format module has count(source) -> int | None and read(source, skip) -> generator returning the row count
    return importlib.import_module(f"sigma_fast.io.corpora.{format}")


def _detect_one(source):
    # the format of one source, or None when it cannot tell
    lower = source.lower()
    if _sources.is_shard(lower) and not lower.endswith(".parquet"):
        return "webdataset"
    if lower.endswith(".csv"):
        return "manifest"
    if lower.endswith((".jsonl", ".json")):
        return "anyedit" if _reader("anyedit").is_anyedit_json(source) else (
            "manifest" if lower.endswith(".jsonl") else None)
    if lower.endswith(".parquet"):
        from sigma_fast.io.corpora import parquet

        names = parquet.column_names(source)
        return None if names is None else parquet.format_of(names)
    return "folder" if _sources.is_dir(source) else None


def detect(sources):
    """The format of a list of resolved sources, from the first one that tells (file suffix, parquet
    column names, a directory without parquet/tar files -> folder). ValueError when none does."""
    for source in sources:
        format = _detect_one(source)
        if format is not None:
            return format
    raise ValueError(f"cannot detect the corpus format of {sources[0]!r}: pass format= one of {', '.join(FORMATS)}")


class Corpus:
    """The rows of a corpus, read lazily; iterate it (or `records(start)`) for PairRecord | RowFailure."""

    def __init__(self, format, sources, limit=None):
        self.format = format
        self.sources = list(sources)
        self.limit = limit
        self._module = _reader(format)
        self._counts = {}

    def _count(self, source):
        if source not in self._counts:
            self._counts[source] = self._module.count(source)
        return self._counts[source]

    def total(self) -> Optional[int]:
        """The row count (failures included, capped by `limit`), or None when only a full read can tell."""
        counted = 0
        for source in self.sources:
            if self.limit is not None and counted >= self.limit:
                return self.limit
            rows = self._count(source)
            if rows is None:
                return None
            counted += rows
        return counted if self.limit is None else min(counted, self.limit)

    def __len__(self):
        total = self.total()
        if total is None:
            raise TypeError(f"a {self.format} corpus has no cheap length: use total() (None here)")
        return total

    def __iter__(self):
        return self.records()

    def records(self, start=0):
        """PairRecord | RowFailure from index `start` on; whole files are skipped by their row counts
        where those are cheap, whole parquet row groups by their metadata."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        offset = 0
        for source in self.sources:
            if self.limit is not None and offset >= self.limit:
                return
            known = self._count(source)
            if known is not None and offset + known <= start:
                offset += known
                continue
            rows = self._module.read(source, max(0, start - offset))
            try:
                while True:
                    try:
                        item = next(rows)
                    except StopIteration as stop:
                        offset += stop.value
                        break
                    item.index += offset
                    if self.limit is not None and item.index >= self.limit:
                        return
                    yield item
            finally:
                rows.close()

    def __repr__(self):
        return f"Corpus(format={self.format!r}, sources={len(self.sources)}, limit={self.limit})"


def open_corpus(input, format=None, limit=None) -> Corpus:
    """A corpus from a path, glob, directory or fsspec URL (or a list of them). `format=None`
    detects it. FileNotFoundError when the input matches nothing; only metadata is read here."""
    if format is not None and format not in FORMATS + BENCHMARK_FORMATS:
        raise ValueError(f"unknown corpus format {format!r}: expected one of {', '.join(FORMATS + BENCHMARK_FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
    found = _sources.resolve(input)
    return Corpus(format or detect(found), found, limit)


__all__ = ["BENCHMARK_FORMATS", "FORMATS", "Corpus", "PairRecord", "RowFailure", "detect", "open_corpus"]
