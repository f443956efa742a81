"""AnyEdit (`Bin1117/AnyEdit`). Published as HF parquet with `image_id`, `edit_instruction`,
`edit_type` (-> meta["action"]), image structs `image_file`, `edited_file`, `visual_input` (not read:
it is the extra visual condition of the visual-editing types) and the `input`/`output` captions.
Also read: JSON (a list of objects) or JSONL files with the same fields where `image_file` and
`edited_file` are paths relative to the JSON file's folder. Keys are `"{file stem}/{row:08d}"`:
`image_id` names the source image, which several edits share, so it stays in meta."""
import json

from sigma_fast.io.corpora import parquet, sources
from sigma_fast.io.corpora.record import RowFailure

JSON_SUFFIXES = (".json", ".jsonl")
PEEK_BYTES = 65536


def describe(spec, row, default_key):
    return default_key, row.get(spec.instruction), {"action": row.get("edit_type")}


SPEC = parquet.Spec("anyedit", original="image_file", edited="edited_file", instruction="edit_instruction",
                    signature=("image_file", "edited_file", "edit_instruction"), describe=describe)


def is_json(source):
    return source.lower().endswith(JSON_SUFFIXES)


def is_anyedit_json(source):
    """Whether a JSON/JSONL file's start names AnyEdit's fields (a cheap look, for detection)."""
    try:
        with sources.open_binary(source) as handle:
            head = handle.read(PEEK_BYTES)
    except OSError:
        return False
    return all(f'"{name}"'.encode() in head for name in ("image_file", "edited_file", "edit_instruction"))


def _json_rows(source):
    # yields a dict or a one-line error per row; a whole-file error is one row
    try:
        with sources.open_binary(source) as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        yield f"unreadable JSON file ({type(error).__name__})"
        return
    if source.lower().endswith(".jsonl"):
        for line in text.splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    yield f"invalid JSON ({error})"
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        yield f"invalid JSON ({error})"
        return
    if not isinstance(rows, list):
        yield f"a JSON corpus file must hold a list of objects, got {type(rows).__name__}"
        return
    yield from rows


def count(source):
    return sum(1 for _ in _json_rows(source)) if is_json(source) else parquet.count(source)


def read(source, skip=0):
    if not is_json(source):
        return (yield from parquet.read(SPEC, source, skip))
    file_stem = sources.stem(source)
    index = -1
    for index, row in enumerate(_json_rows(source)):
        if index < skip:
            continue
        key, where = f"{file_stem}/{index:08d}", f"{source}#row={index}"
        if not isinstance(row, dict):
            reason = row if isinstance(row, str) else f"a row must be a JSON object, got {type(row).__name__}"
            yield RowFailure(index, key, where, reason)
            continue
        yield parquet.to_record(SPEC, row, index, key, source, where)
    return index + 1
