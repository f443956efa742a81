"""Reading pair manifests: JSONL or CSV rows with `original`, `edited`, `instruction`, optional
`mask` and optional `key`. Relative paths resolve against the manifest's folder. A row's key is the
corpus reader's (`sigma_fast.io.corpora.manifest.row_key`: its `key` verbatim, else a stable one from
its line number), so a prior store that `sigma-fast prior` filled from the same manifest has it;
file names are made from keys where files are written (`safe_name`). Malformed rows come back as
failures, not errors."""
import os
from dataclasses import dataclass, field
from typing import Optional

from sigma_fast.io.corpora.manifest import manifest_rows, row_key

REQUIRED_FIELDS = ("original", "edited", "instruction")


@dataclass
class PairRecord:
    key: str
    original: str
    edited: str
    instruction: str
    mask: Optional[str] = None
    line: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class RowFailure:
    key: str
    path: str
    reason: str


def read_manifest(path):
    """-> (records, failures): PairRecords in file order and RowFailures for malformed rows."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path!r} not found")
    folder = os.path.dirname(os.path.abspath(path))
    records, failures, seen = [], [], set()

    def resolve(value):
        return value if os.path.isabs(value) else os.path.join(folder, value)

    for line, row in manifest_rows(path):
        if isinstance(row, str):
            failures.append(RowFailure(f"line{line:08d}", path, f"line {line}: {row}"))
            continue
        key = row_key(row, line)
        missing = [name for name in REQUIRED_FIELDS if not isinstance(row.get(name), str)
                   or (name != "instruction" and not row[name])]
        if missing:
            failures.append(RowFailure(key, path, f"line {line}: missing field(s) {missing}"))
            continue
        if key in seen:
            failures.append(RowFailure(key, path, f"line {line}: duplicate key {key!r}"))
            continue
        seen.add(key)
        mask = row.get("mask") or None
        extra = {name: value for name, value in row.items() if name not in REQUIRED_FIELDS + ("mask", "key")}
        records.append(PairRecord(key, resolve(row["original"]), resolve(row["edited"]), row["instruction"],
                                  resolve(mask) if mask else None, line, extra))
    return records, failures
