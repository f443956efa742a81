"""IMDL-BenCo's `JsonDataset`: a JSON list of `[image_path, mask_path]`, `"Negative"` instead of a
mask path for an authentic image. IMDL-BenCo opens relative paths from its working directory; here a
relative path is looked up next to the JSON file first, then from the working directory. Key: the
image path as listed. Single-image: see `sigma_fast.io.corpora.benchmark`."""
import json
import os

from sigma_fast.io.corpora import benchmark, sources
from sigma_fast.io.corpora.record import RowFailure

NEGATIVE = "Negative"


def _entries(source):
    # the JSON list, or a one-line reason it cannot be read
    try:
        entries = json.loads(sources.read_bytes(source).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"unreadable JSON list ({type(error).__name__})"
    return entries if isinstance(entries, list) else f"a JSON list is expected, got {type(entries).__name__}"


def count(source):
    entries = _entries(source)
    return 1 if isinstance(entries, str) else len(entries)


def _resolve(path, folder):
    # next to the JSON file, else IMDL-BenCo's working-directory rule
    beside = sources.join(folder, path)
    if sources.is_url(beside) or sources.exists(beside) or os.path.isabs(path):
        return beside
    return os.path.abspath(path)


def read(source, skip=0):
    entries, folder = _entries(source), sources.parent(source)
    if isinstance(entries, str):
        if skip == 0:
            yield RowFailure(0, sources.name(source), source, entries)
        return 1
    for index, entry in enumerate(entries):
        if index < skip:
            continue
        where = f"{source}#{index}"
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(p, str) and p for p in entry)):
            yield RowFailure(index, f"row{index:08d}", where,
                             "an entry must be [image_path, mask_path or \"Negative\"]")
            continue
        image, mask = entry
        negative = mask == NEGATIVE
        meta = {"format": "benco_json", "source": source, "label": int(not negative), "tampered": not negative}
        yield benchmark.single_record(index, image, where, _resolve(image, folder),
                                      None if negative else _resolve(mask, folder), folder, meta)
    return len(entries)
