"""The record every corpus reader yields: a pair of encoded images with its instruction, or the
reason one row could not be read. Readers never decode images and never raise on a bad row."""
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class PairRecord:
    index: int                 # 0-based position in the corpus order (shards = index // shard_size)
    key: str                   # the corpus's own key, verbatim: writers make safe names
    original: bytes            # encoded image bytes, never decoded by the reader
    edited: bytes
    instruction: str
    mask: Optional[bytes] = None  # encoded ground-truth mask bytes, when the corpus has one
    meta: dict = field(default_factory=dict)  # JSON-safe: format, source, row/member, action, extra columns;
    # "original_path"/"edited_path": absolute local paths when the image came from a local file


@dataclass
class RowFailure:
    index: int
    key: str
    source: str                # file (and row/member) the bad row came from
    reason: str                # one line


def json_safe(value):
    """`value` with everything JSON cannot hold turned into a string (bytes dropped to their length)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {str(name): json_safe(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return str(value)


def check_instruction(value):
    """-> (instruction, None) or (None, reason) for a missing or blank instruction."""
    if not isinstance(value, str):
        return None, "missing instruction" if value is None else f"instruction is a {type(value).__name__}"
    if not value.strip():
        return None, "empty instruction"
    return value, None
