"""Webdataset tar shards: a sample is the run of consecutive members sharing a key (the member
name up to the first '.' of its base name): `key.src.*` (or `orig`/`original`/`source`),
`key.edit.*` (or `edited`/`target`), `key.json` with the instruction under "instruction",
"edit_prompt", "edit", "prompt" or "edit_instruction" (else `key.txt`), optional `key.mask.*`.
Members are read one by one, never extracted: a local uncompressed tar with seeks (`tarfile` mode
`r:`), so the members of skipped samples are never read and a count (everything skipped) reads the
headers only; a compressed or remote one from the stream (mode `r|*`, any compression). Both modes
find the same members and the same damage: a truncated member or an unreadable tar is one RowFailure
and the file ends there."""
import contextlib
import json
import tarfile
import zlib

from sigma_fast.io.corpora import sources
from sigma_fast.io.corpora.images import MissingImage, image_bytes
from sigma_fast.io.corpora.record import PairRecord, RowFailure, check_instruction, json_safe
from sigma_fast.io.messages import error_line

FORMAT = "webdataset"
ROLES = {"src": "original", "orig": "original", "original": "original", "source": "original",
         "edit": "edited", "edited": "edited", "target": "edited", "mask": "mask"}
INSTRUCTION_FIELDS = ("instruction", "edit_prompt", "edit", "prompt", "edit_instruction")
ACTION_FIELDS = ("action", "edit_type", "task")
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def split_name(name):
    """'dir/abc.src.jpg' -> ('dir/abc', 'src.jpg'); None for a name without an extension."""
    folder, _, base = name.rpartition("/")
    if "." not in base.lstrip("."):
        return None
    dot = base.index(".", 1 if base.startswith(".") else 0)
    stem, suffix = base[:dot], base[dot + 1:]
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def count(source):
    """Unknown without reading the whole stream."""
    return None


def open_archive(handle, source):
    """A TarFile over an open `source`: random access for a local uncompressed tar, else a stream."""
    if not sources.is_url(source):  # a remote file would pay a request per seek
        try:
            return tarfile.open(fileobj=handle, mode="r:")
        except tarfile.ReadError:  # compressed, or no tar: the stream says which
            handle.seek(0)
    return tarfile.open(fileobj=handle, mode="r|*")


def read(source, skip=0):
    """PairRecord | RowFailure per sample from sample `skip` on (index local to the shard);
    returns the shard's sample count. Members of skipped samples are passed over unread."""
    with contextlib.ExitStack() as stack:
        try:
            archive = open_archive(stack.enter_context(sources.open_binary(source)), source)
        except READ_ERRORS as error:
            if skip == 0:
                yield RowFailure(0, sources.name(source), source, f"not a readable tar file ({error_line(error)})")
            return 1
        index, key, parts, member = 0, None, [], None
        try:
            for member in archive:
                split = split_name(member.name) if member.isfile() else None
                if split is None:
                    continue
                if split[0] != key:
                    if key is not None:
                        if index >= skip:
                            yield _sample(index, key, parts, source)
                        index += 1
                    key, parts = split[0], []
                data = archive.extractfile(member).read() if index >= skip else None
                parts.append((member.name, split[1], data))
        except READ_ERRORS as error:
            if index >= skip:
                where = "after the last member" if member is None else f"{member.name!r}"
                yield RowFailure(index, key if key is not None else sources.name(source), source,
                                 f"truncated tar member {where} ({error_line(error)})")
            return index + 1
        if key is None:
            return 0
        if index >= skip:
            yield _sample(index, key, parts, source)
        return index + 1


def _sample(index, key, parts, source):
    # one sample's members [(name, suffix, bytes)] -> PairRecord | RowFailure
    where = f"{source}#{key}"
    found, info, text, names = {}, {}, None, [name for name, _, _ in parts]
    for name, suffix, data in parts:
        role = ROLES.get(suffix.split(".", 1)[0])
        if suffix == "json":
            try:
                info = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                return RowFailure(index, key, where, f"invalid {name!r} ({type(error).__name__})")
            if not isinstance(info, dict):
                return RowFailure(index, key, where, f"{name!r} must hold a JSON object")
        elif suffix == "txt":
            text = data.decode("utf-8", "replace")
        elif role is not None and role not in found:
            found[role] = data
    for role in ("original", "edited"):
        if role not in found:
            return RowFailure(index, key, where, f"missing {role} image member")
    try:
        images = {role: image_bytes(data, "", role)[0] for role, data in found.items()}
    except MissingImage as error:
        return RowFailure(index, key, where, str(error))
    instruction = next((info[name] for name in INSTRUCTION_FIELDS if name in info), text)
    instruction, reason = check_instruction(instruction)
    if reason is not None:
        return RowFailure(index, key, where, reason)
    meta = {"format": FORMAT, "source": source, "members": names}
    action = next((info[name] for name in ACTION_FIELDS if info.get(name) is not None), None)
    if action is not None:
        meta["action"] = json_safe(action)
    meta.update({name: json_safe(value) for name, value in info.items()
                 if name not in INSTRUCTION_FIELDS and name not in meta})
    return PairRecord(index, key, images["original"], images["edited"], instruction, images.get("mask"), meta)
