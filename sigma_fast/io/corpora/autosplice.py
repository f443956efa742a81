"""AutoSplice (DALL-E 2 text-guided local edits of Visual Genome photos), its released folder:

    ROOT/Authentic/<id>.jpg              the unedited photo (the pair's original)
    ROOT/Forged_JPEG100|90|75/<id>_<n>.jpg  edit n of photo <id>, JPEG quality 100, 90 or 75
    ROOT/Mask/<id>_mask.png              the edited region (shared by the edits of one photo)
    ROOT/Caption/<id>.(json|txt)         optional: the text prompt

A real pair, so SIGMA runs on it: original = Authentic/<id>.jpg, edited = the forged image. The input
is the root (every quality present, `meta["jpeg_quality"]`) or one `Forged_JPEG<q>` folder. Keys
`Q<q>/<id>_<n>`, sorted by quality (100, 90, 75) then name. The instruction is the caption's text
("caption", "text" or "prompt" of a JSON object, or the .txt file), else "" (the whole JSON in
`meta["caption"]`). Authentic photos without an edit are not pairs and are not read."""
import json

from sigma_fast.io.corpora import sources
from sigma_fast.io.corpora.images import MissingImage, image_bytes
from sigma_fast.io.corpora.record import PairRecord, RowFailure, json_safe

QUALITIES = (100, 90, 75)
CAPTION_FIELDS = ("caption", "text", "prompt")


def _layout(source):
    # -> (root, [qualities to read]) for the root or one Forged_JPEG<q> folder
    name = sources.name(source)
    for quality in QUALITIES:
        if name == f"Forged_JPEG{quality}":
            return sources.parent(source), [quality]
    return source, list(QUALITIES)


def _listing(source):
    root, qualities = _layout(source)
    files = sources.list_tree(root)
    rows = []
    for quality in qualities:
        folder = f"Forged_JPEG{quality}/"
        names = sorted(path[len(folder):] for path in files if path.startswith(folder) and "/" not in path[len(folder):]
                       and not path[len(folder):].startswith("."))
        rows += [(quality, name) for name in names]
    authentic = {}  # photo id -> Authentic/ file (first by name)
    for path in files:
        if path.startswith("Authentic/") and "/" not in path[len("Authentic/"):]:
            authentic.setdefault(path[len("Authentic/"):].rsplit(".", 1)[0], path)
    return root, set(files), rows, authentic


def count(source):
    return len(_listing(source)[2])


def _caption(root, files, photo):
    # -> (instruction, meta) from Caption/<id>.json or .txt
    for relative in (f"Caption/{photo}.json", f"Caption/{photo}.txt"):
        if relative not in files:
            continue
        try:
            text = sources.read_bytes(sources.join(root, relative)).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return "", {}
        if relative.endswith(".txt"):
            return text.strip(), {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return "", {}
        found = next((value[name] for name in CAPTION_FIELDS if isinstance(value, dict)
                      and isinstance(value.get(name), str)), "")
        return found.strip(), {"caption": json_safe(value)}
    return "", {}


def read(source, skip=0):
    root, files, rows, authentic = _listing(source)
    for index, (quality, name) in enumerate(rows):
        if index < skip:
            continue
        stem = name.rsplit(".", 1)[0]
        photo = stem.split("_")[0]
        key, where = f"Q{quality}/{stem}", f"{root}#Forged_JPEG{quality}/{name}"
        paths = {"original": authentic.get(photo), "edited": f"Forged_JPEG{quality}/{name}",
                 "mask": f"Mask/{photo}_mask.png" if f"Mask/{photo}_mask.png" in files else None}
        meta, images = {"format": "autosplice", "source": root, "jpeg_quality": quality, "photo": photo}, {}
        for role, relative in paths.items():
            if relative is None:
                label = "Authentic" if role == "original" else "Mask"
                images = RowFailure(index, key, where, f"no {label}/ file for photo {photo}")
                break
            try:
                images[role], path = image_bytes(relative, root, role)
            except MissingImage as error:
                images = RowFailure(index, key, where, str(error))
                break
            local = sources.local_path(path)
            if local is not None:
                meta[f"{role}_path"] = local
        if isinstance(images, RowFailure):
            yield images
            continue
        instruction, extra = _caption(root, files, photo)
        meta.update(extra)
        yield PairRecord(index, key, images["original"], images["edited"], instruction, images["mask"], meta)
    return len(rows)
