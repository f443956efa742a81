"""Shared machinery of the benchmark readers (sets with ground-truth masks).

Single-image sets (CocoGlide, SID_Set, OpenSDI, IMDL-BenCo's JsonDataset/ManiDataset) have no
original image: SIGMA and the other differencing methods need a pair, so these records carry
`original=None`, `instruction=""` and `meta["single_image"] = True`; only methods that take one image
run on them (`sigma-fast eval` reports the differencing methods as not applicable there). Every record
says `meta["label"]` (the set's own image label) and `meta["tampered"]` (whether its pixels should be
scored as manipulated); authentic images keep `mask=None` (IMDL-BenCo's "Negative": an all-zero mask).
"""
import contextlib

from sigma_fast.io.corpora import parquet, sources
from sigma_fast.io.corpora.images import MissingImage, image_bytes
from sigma_fast.io.corpora.record import PairRecord, RowFailure, json_safe


def single_record(index, key, where, edited, mask, folder, meta):
    """PairRecord of one image (original None, empty instruction) or RowFailure; `edited`/`mask` are
    image values (struct, bytes or a path relative to `folder`); mask None = authentic."""
    meta = {"single_image": True, **meta}
    images = {}
    for role, value in (("edited", edited), ("mask", mask)):
        if value is None and role == "mask":
            continue
        try:
            images[role], path = image_bytes(value, folder, role)
        except MissingImage as error:
            return RowFailure(index, key, where, str(error))
        local = None if path is None else sources.local_path(path)
        if local is not None:
            meta[f"{role}_path"] = local
    return PairRecord(index, key, None, images["edited"], "", images.get("mask"), json_safe(meta))


def read_parquet(source, skip, format, image, mask, label, key_column, tampered, extra=None):
    """PairRecord | RowFailure per row of a single-image parquet file from row `skip` on; returns the
    row count. Columns: `image`, `mask` (null for authentic rows), `label` (tampered when in
    `tampered`), `key_column` (else "{file stem}/{row:08d}"); `extra(source)` -> more meta."""
    with contextlib.ExitStack() as stack:
        try:
            file = parquet.pq.ParquetFile(stack.enter_context(sources.open_binary(source)))
        except parquet.READ_ERRORS as error:
            if skip == 0:
                yield RowFailure(0, sources.name(source), source, f"not a readable parquet file ({error})")
            return 1
        names, stem = file.schema_arrow.names, sources.stem(source)
        missing = [name for name in (image, label) if name not in names]
        rows = file.metadata.num_rows
        for row, values in enumerate(_rows(file, skip, missing)):
            if row < skip:
                continue
            key, where = f"{stem}/{row:08d}", f"{source}#row={row}"
            if isinstance(values, str):
                yield RowFailure(row, key, where, values)
                continue
            if values.get(key_column) not in (None, ""):
                key = str(values[key_column])
            meta = {"format": format, "source": source, "row": row, "label": values.get(label),
                    "tampered": values.get(label) in tampered, **(extra(source) if extra else {})}
            meta.update({name: value for name, value in values.items()
                         if name not in (image, mask, label) and name not in meta})
            yield single_record(row, key, where, values.get(image), values.get(mask), sources.parent(source), meta)
        return rows


def _rows(file, skip, missing):
    # a dict per row, or a one-line reason; row groups wholly before `skip` are not read (None per row)
    start = 0
    for group in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        start += size
        if start <= skip or missing:
            yield from [None if start <= skip else f"missing column(s) {missing}"] * size
            continue
        done = 0
        try:
            for batch in file.iter_batches(batch_size=parquet.BATCH_ROWS, row_groups=[group]):
                for values in batch.to_pylist():
                    done += 1
                    yield values
        except parquet.READ_ERRORS as error:
            yield from [f"unreadable row group {group} ({type(error).__name__})"] * (size - done)
