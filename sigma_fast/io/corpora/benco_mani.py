"""IMDL-BenCo's `ManiDataset`: a folder with `Tp/` (images) and `Gt/` (masks), paired as IMDL-BenCo
pairs them: by position in each folder's sorted listing (so the stems should be identical; a
differing stem is kept in `meta["mask_stem"]`). Files starting with '.' are ignored; an image without
a mask at its position is a RowFailure. Key: the image's stem. Single-image: see
`sigma_fast.io.corpora.benchmark`."""
from sigma_fast.io.corpora import benchmark, sources
from sigma_fast.io.corpora.record import RowFailure


def _listing(root):
    found = {"Tp": [], "Gt": []}
    for relative in sources.list_tree(root):
        top, _, base = relative.partition("/")
        if top in found and base and "/" not in base and not base.startswith("."):
            found[top].append(relative)
    return sorted(found["Tp"]), sorted(found["Gt"])


def _stem(relative):
    base = relative.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def count(source):
    return len(_listing(source)[0])


def read(source, skip=0):
    images, masks = _listing(source)
    for index, image in enumerate(images):
        if index < skip:
            continue
        key, where = _stem(image), f"{source}#{image}"
        if index >= len(masks):
            yield RowFailure(index, key, where, f"no Gt/ file at position {index} (Gt/ holds {len(masks)})")
            continue
        meta = {"format": "benco_mani", "source": source, "label": 1, "tampered": True}
        if _stem(masks[index]) != key:
            meta["mask_stem"] = _stem(masks[index])
        yield benchmark.single_record(index, key, where, image, masks[index], source, meta)
    return len(images)
