"""CocoGlide (TruFor's GLIDE-inpainted COCO set, 256x256), in either published form:
  - a folder `ROOT/fake/<name>.png` + `ROOT/mask/<name>.png` (same name) and `ROOT/real/<name>.png`
    (authentic, no mask); keys `fake/<stem>` and `real/<stem>`, sorted;
  - HF parquet with `image`, `mask`, `label` (1 fake, 0 real).
Single-image: see `sigma_fast.io.corpora.benchmark`."""
from sigma_fast.io.corpora import benchmark, parquet, sources
from sigma_fast.io.corpora.record import RowFailure

FOLDERS = ("fake", "real")
TAMPERED = (1,)


def _listing(root):
    # [(key, image relative path, mask relative path or None, label)] sorted by key; a fake without a mask
    # keeps mask "" (a RowFailure when read)
    files = {}
    for relative in sources.list_tree(root):
        top, _, base = relative.partition("/")
        if top in (*FOLDERS, "mask") and base and "/" not in base and not base.startswith("."):
            files.setdefault(top, {})[base.rsplit(".", 1)[0]] = relative
    masks = files.get("mask", {})
    rows = [(f"{top}/{stem}", path, masks.get(stem, "") if top == "fake" else None, int(top == "fake"))
            for top in FOLDERS for stem, path in files.get(top, {}).items()]
    return sorted(rows)


def count(source):
    return len(_listing(source)) if sources.is_dir(source) else parquet.count(source)


def read(source, skip=0):
    if not sources.is_dir(source):
        return (yield from benchmark.read_parquet(source, skip, "cocoglide", "image", "mask", "label", "key", TAMPERED))
    rows = _listing(source)
    for index, (key, image, mask, label) in enumerate(rows):
        if index < skip:
            continue
        where = f"{source}#{key}"
        if mask == "":
            yield RowFailure(index, key, where, f"no mask/{key.split('/', 1)[1]}.* for a fake image")
            continue
        meta = {"format": "cocoglide", "source": source, "label": label, "tampered": label in TAMPERED}
        yield benchmark.single_record(index, key, where, image, mask, source, meta)
    return len(rows)
