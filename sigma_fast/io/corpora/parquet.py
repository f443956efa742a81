"""Shared machinery of the HF-parquet corpora: stream a file row group by row group with
`pyarrow.parquet.ParquetFile`, reading only the columns a corpus uses plus its small (non-image)
columns for meta, and map each row through the corpus's `Spec` to a PairRecord or RowFailure.
A file that is not parquet is one RowFailure; an unreadable row group is one RowFailure per row."""
import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from sigma_fast.io.corpora import sources
from sigma_fast.io.corpora.images import MissingImage, image_bytes
from sigma_fast.io.corpora.record import PairRecord, RowFailure, check_instruction, json_safe
from sigma_fast.io.messages import error_line

BATCH_ROWS = 64  # rows converted to Python at a time inside a row group
READ_ERRORS = (pa.ArrowException, OSError, ValueError)


@dataclass(frozen=True)
class Spec:
    format: str
    original: str              # image columns
    edited: str
    instruction: str           # the text column (OmniEdit: the list column `describe` picks from)
    mask: Optional[str] = None
    signature: tuple = ()      # columns whose presence identifies the corpus (detection)
    # (row, default key) -> (key, instruction value, meta); the default is `describe_plain`
    describe: Optional[Callable] = None

    @property
    def required(self):
        return (self.original, self.edited, self.instruction)


def describe_plain(spec, row, default_key):
    return default_key, row.get(spec.instruction), {}


def _specs():
    from sigma_fast.io.corpora import anyedit, hqedit, instructpix2pix, magicbrush, omniedit, ultraedit

    return [module.SPEC for module in (magicbrush, omniedit, anyedit, ultraedit, instructpix2pix, hqedit)]


def format_of(names):
    """The corpus whose signature columns are all among `names`, or None."""
    names = set(names)
    for spec in _specs():
        if set(spec.signature) <= names:
            return spec.format
    return None


def _open(handle):
    return pq.ParquetFile(handle)


def column_names(source):
    """The top-level column names of a parquet source, or None when it cannot be read as parquet."""
    try:
        with sources.open_binary(source) as handle:
            return list(_open(handle).schema_arrow.names)
    except READ_ERRORS:
        return None


def count(source):
    """Rows by the footer metadata; an unreadable file counts as the one failure it yields."""
    try:
        with sources.open_binary(source) as handle:
            return _open(handle).metadata.num_rows
    except READ_ERRORS:
        return 1


def _is_image_type(kind):
    return (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0))


def _columns(spec, schema):
    # used image columns + every non-image column (meta); other image columns are never read
    images = {spec.original, spec.edited, spec.mask} - {None}
    return [field.name for field in schema if field.name in images or not _is_image_type(field.type)]


def read(spec, source, skip=0):
    """PairRecord | RowFailure for each row from row `skip` on (index local to the file); returns
    the file's row count. Whole row groups before `skip` are not read."""
    with contextlib.ExitStack() as stack:
        try:
            file = _open(stack.enter_context(sources.open_binary(source)))
        except READ_ERRORS as error:
            if skip == 0:
                yield RowFailure(0, sources.name(source), source, f"not a readable parquet file ({error_line(error)})")
            return 1
        yield from _read_file(spec, file, source, skip)
        return file.metadata.num_rows


def _read_file(spec, file, source, skip):
    schema = file.schema_arrow
    file_stem = sources.stem(source)
    missing = [name for name in spec.required if name not in schema.names]
    start = 0
    for group in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        first, start = start, start + size
        if start <= skip:
            continue
        if missing:
            for row in range(max(first, skip), start):
                yield RowFailure(row, f"{file_stem}/{row:08d}", f"{source}#row={row}",
                                 f"missing column(s) {missing} for format {spec.format}")
            continue
        row = first
        try:
            for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=_columns(spec, schema)):
                for values in batch.to_pylist():
                    if row >= skip:
                        yield to_record(spec, values, row, f"{file_stem}/{row:08d}", source, f"{source}#row={row}")
                    row += 1
        except READ_ERRORS as error:
            # what is left of a broken row group: one failure per row so every row is counted
            for lost in range(max(row, skip), start):
                yield RowFailure(lost, f"{file_stem}/{lost:08d}", f"{source}#row={lost}",
                                 f"unreadable row group {group} ({error_line(error)})")


def to_record(spec, row, index, default_key, source, where):
    """One row (a dict of column values) -> PairRecord or RowFailure. Image values may be structs,
    bytes or paths relative to the source's folder (then their absolute local path goes to meta)."""
    describe = spec.describe or describe_plain
    key, instruction, extra = describe(spec, row, default_key)
    instruction, reason = check_instruction(instruction)
    if reason is not None:
        return RowFailure(index, key, where, reason)
    folder = sources.parent(source)
    meta = {"format": spec.format, "source": source, "row": index}
    found = {}
    for role, column in (("original", spec.original), ("edited", spec.edited), ("mask", spec.mask)):
        if column is None or (role == "mask" and row.get(column) is None):
            continue
        try:
            found[role], path = image_bytes(row.get(column), folder, role)
        except MissingImage as error:
            return RowFailure(index, key, where, str(error))
        local = None if path is None else sources.local_path(path)
        if local is not None:
            meta[f"{role}_path"] = local
    used = set(spec.required) | {spec.mask}
    meta.update({name: json_safe(value) for name, value in row.items() if name not in used and name not in meta})
    meta.update(json_safe(extra))
    return PairRecord(index, key, found["original"], found["edited"], instruction, found.get("mask"), meta)
