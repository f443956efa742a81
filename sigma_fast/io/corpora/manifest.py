"""JSONL/CSV manifests: rows with `original`, `edited`, `instruction`, optional `mask` and `key`
(same rules as `sigma_fast.data.manifest`). Image paths resolve against the manifest's folder and
are read one record at a time. A malformed row, a duplicate key, an empty instruction or a missing
image file is a RowFailure; a row without a `key` is keyed `line{n:08d}` by its line number."""
import csv
import io
import json

from sigma_fast.io.corpora import sources
from sigma_fast.io.corpora.images import MissingImage, image_bytes
from sigma_fast.io.corpora.record import PairRecord, RowFailure, check_instruction, json_safe

FORMAT = "manifest"
REQUIRED_FIELDS = ("original", "edited", "instruction")
SUFFIXES = (".jsonl", ".csv")


def manifest_rows(source):
    """(line number, row dict or a one-line error) per non-empty row of a JSONL/CSV manifest."""
    # yields (line number, dict or a one-line error); a file that stops decoding ends in one error
    with sources.open_binary(source) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="" if source.lower().endswith(".csv") else None)
        try:
            if source.lower().endswith(".csv"):
                for line, row in enumerate(csv.DictReader(text), start=2):
                    yield line, {name: value for name, value in row.items() if name is not None}
                return
            for line, content in enumerate(text, start=1):
                if not content.strip():
                    continue
                try:
                    row = json.loads(content)
                except json.JSONDecodeError as error:
                    yield line, f"invalid JSON ({error})"
                    continue
                yield line, row if isinstance(row, dict) else f"a row must be a JSON object, got {type(row).__name__}"
        except (UnicodeDecodeError, csv.Error) as error:
            yield 0, f"unreadable manifest ({type(error).__name__}: {error})"


def count(source):
    """Rows in the manifest (blank JSONL lines are not rows); reads the file without its images."""
    return sum(1 for _ in manifest_rows(source))


def row_key(row, line):
    """A row's corpus key: its `key` verbatim (as text), else `line{n:08d}`. Training's manifest reader
    keys rows the same, so a prior store filled from this reader is read by training."""
    key = row.get("key")
    return f"line{line:08d}" if key in (None, "") else str(key)


def _problem(row):
    # a one-line reason the row cannot be a pair, or None
    missing = [name for name in REQUIRED_FIELDS if not isinstance(row.get(name), str)
               or (name != "instruction" and not row[name])]
    if missing:
        return f"missing field(s) {missing}"
    if row.get("mask") not in (None, "") and not isinstance(row["mask"], str):
        return f"mask must be a path, got {type(row['mask']).__name__}"
    return check_instruction(row["instruction"])[1]


def read(source, skip=0):
    """PairRecord | RowFailure for each row from row `skip` on (index local to this file);
    returns the file's row count. Skipped rows are parsed (for duplicate keys) but their images are not read."""
    folder = sources.parent(source)
    seen = set()
    index = -1
    for index, (line, row) in enumerate(manifest_rows(source)):
        where = f"{source}:{line}"
        if isinstance(row, str):
            if index >= skip:
                yield RowFailure(index, f"line{line:08d}", where, f"line {line}: {row}")
            continue
        key = row_key(row, line)
        problem = _problem(row)
        if problem is None and key in seen:
            problem = f"duplicate key {key!r}"
        seen.add(key)
        if index < skip:
            continue
        if problem is not None:
            yield RowFailure(index, key, where, f"line {line}: {problem}")
            continue
        yield _record(index, key, row, line, folder, source, where)
    return index + 1


def _record(index, key, row, line, folder, source, where):
    meta, images = {"format": FORMAT, "source": source, "line": line}, {}
    for role in ("original", "edited", "mask"):
        if row.get(role) in (None, ""):
            continue
        try:
            images[role], path = image_bytes(row[role], folder, role)
        except MissingImage as error:
            return RowFailure(index, key, where, f"line {line}: {error}")
        local = sources.local_path(path)
        if local is not None:
            meta[f"{role}_path"] = local
    meta.update({name: json_safe(value) for name, value in row.items()
                 if name not in REQUIRED_FIELDS + ("mask", "key") and name not in meta})
    return PairRecord(index, key, images["original"], images["edited"], row["instruction"], images.get("mask"), meta)
