"""Reading pair manifests: JSONL or CSV rows with `original`, `edited`, `instruction`, optional
`mask` and optional `key`. Relative paths resolve against the manifest's folder; a row without a
`key` gets a stable one from its line number. Malformed rows come back as failures, not errors."""
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from sigma_fast.io.corpora.manifest import manifest_rows

REQUIRED_FIELDS = ("original", "edited", "instruction")
UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


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


def safe_key(key):
    """A key usable as a file stem: unsafe characters replaced by '_'."""
    cleaned = UNSAFE_KEY_CHARS.sub("_", str(key)).strip("._")
    if not cleaned:
        raise ValueError(f"key {key!r} has no usable characters")
    return cleaned


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
        key = safe_key(row["key"]) if row.get("key") not in (None, "") else f"line{line:08d}"
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
