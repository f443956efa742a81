"""A folder of pairs, one layout (any image encoding, nested sub-folders allowed):

    ROOT/original/<stem>.<ext>     the unedited image
    ROOT/edited/<stem>.<ext>       the edited image (same relative stem)
    ROOT/instructions.jsonl        one {"key": "<stem>", "instruction": "..."} per line (other fields -> meta)
      or ROOT/instruction/<stem>.txt  the instruction as UTF-8 text (used when the JSONL has no line for the stem)
    ROOT/mask/<stem>.<ext>         optional ground-truth mask

The key is the stem relative to `original/` ('a/b/001' for original/a/b/001.jpg); rows are the
union of the stems under `original/` and `edited/`, sorted, so a stem on one side only is a
RowFailure. Files starting with '.' are ignored. Bytes are read one record at a time."""
import json

from sigma_fast.io.corpora import sources
from sigma_fast.io.corpora.images import MissingImage, image_bytes
from sigma_fast.io.corpora.record import PairRecord, RowFailure, check_instruction, json_safe

FORMAT = "folder"
SUBFOLDERS = ("original", "edited", "mask", "instruction")
INSTRUCTIONS_FILE = "instructions.jsonl"


def _listing(folder):
    # {role: {stem: [relative paths]}} for the four sub-folders
    found = {role: {} for role in SUBFOLDERS}
    for relative in sources.list_tree(folder):
        top, _, rest = relative.partition("/")
        if top not in found or not rest or any(part.startswith(".") for part in rest.split("/")):
            continue
        directory, _, base = rest.rpartition("/")
        stem = base.rsplit(".", 1)[0] if "." in base else base
        found[top].setdefault(f"{directory}/{stem}" if directory else stem, []).append(relative)
    return found


def _stems(listing):
    return sorted(set(listing["original"]) | set(listing["edited"]))


def count(source):
    return len(_stems(_listing(source)))


def _instructions(folder):
    # {stem: row dict} from instructions.jsonl; rows without a usable key are ignored
    path = sources.join(folder, INSTRUCTIONS_FILE)
    if not sources.exists(path):
        return {}
    rows = {}
    try:
        text = sources.read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    for line in text.splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            rows.setdefault(row["key"], row)
    return rows


def read(source, skip=0):
    """PairRecord | RowFailure per stem from row `skip` on; returns the row count."""
    listing = _listing(source)
    stems = _stems(listing)
    rows = _instructions(source)
    for index, stem in enumerate(stems):
        if index >= skip:
            yield _record(index, stem, listing, rows.get(stem), source)
    return len(stems)


def _record(index, stem, listing, row, folder):
    where = f"{folder}#{stem}"
    paths = {}
    for role in ("original", "edited", "mask", "instruction"):
        matches = listing[role].get(stem, [])
        if len(matches) > 1:
            return RowFailure(index, stem, where, f"several {role} files for one stem: {matches}")
        if matches:
            paths[role] = sources.join(folder, matches[0])
        elif role in ("original", "edited"):
            return RowFailure(index, stem, where, f"missing {role} image")
    if row is not None:
        instruction = row.get("instruction")
    elif "instruction" in paths:
        try:
            instruction = sources.read_bytes(paths["instruction"]).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            return RowFailure(index, stem, where, f"unreadable instruction file ({type(error).__name__})")
    else:
        instruction = None
    instruction, reason = check_instruction(instruction)
    if reason is not None:
        return RowFailure(index, stem, where, reason)
    meta, images = {"format": FORMAT, "source": folder}, {}
    for role in ("original", "edited", "mask"):
        if role not in paths:
            continue
        try:
            images[role] = image_bytes(paths[role], folder, role)[0]
        except MissingImage as error:
            return RowFailure(index, stem, where, str(error))
        local = sources.local_path(paths[role])
        if local is not None:
            meta[f"{role}_path"] = local
    meta.update({name: json_safe(value) for name, value in (row or {}).items()
                 if name not in ("key", "instruction") and name not in meta})
    return PairRecord(index, stem, images["original"], images["edited"], instruction, images.get("mask"), meta)
