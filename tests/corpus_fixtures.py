"""Small corpora in each published schema, for the reader tests and end-to-end annotate tests.

    path = write_fixture("magicbrush", tmp_path, pairs=4, shards=2, missing=(1,))
    expected = fixture_rows("magicbrush", pairs=4, shards=2, missing=(1,))

`write_fixture(format, folder, pairs=4, **options) -> input path` writes the files under `folder`
and returns what to pass to `open_corpus` (a parquet file or shard directory, a manifest, a folder
root, a tar file or shard directory). `fixture_rows(format, pairs, **options)` returns, in corpus
order, what a reader must yield: dicts with key, original, edited, instruction, mask (bytes or None)
and `reason` (None, or a substring of the RowFailure's reason).

Options: size (image side, 8), shards (data files, 1), row_group_size (parquet, 2), keys (list:
the corpus's own keys, for manifest, magicbrush img_id, omniedit, webdataset), and faults, each a
tuple of row numbers: missing (edited image absent), corrupt (edited bytes not an image),
empty_instruction, null_mask; plus truncate=True (webdataset: the last member of the last shard cut
short), junk=True (a file of garbage named like a data file, sorted last: one extra failure row),
csv=True (manifest as CSV), txt=True (folder instructions as .txt files), paths=True (anyedit images
as files next to the parquet), json_list=True (anyedit as a JSON list with image paths).
"""
import io
import json
import math
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CORRUPT = b"this is not an image at all"
MASK_FORMATS = ("magicbrush", "ultraedit", "manifest", "folder", "webdataset")
PARQUET_STEM = "train-{shard:05d}-of-{shards:05d}"


def image(seed, size=8, kind="PNG", mode="RGB"):
    """Deterministic encoded bytes of a tiny image."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(buffer, format=kind)
    return buffer.getvalue()


def _split(pairs, shards):
    # -> [(shard, row within shard)] for each pair, contiguous runs
    per = max(1, math.ceil(pairs / shards))
    return [(row // per, row % per) for row in range(pairs)]


def _default_key(format, row, pairs, shards):
    shard, local = _split(pairs, shards)[row]
    if format == "magicbrush":
        return f"{100 + row // 2}/{row % 2 + 1}"
    if format == "omniedit":
        return f"omni-{row:05d}"
    if format == "manifest":
        return f"pair{row:03d}"
    if format == "folder":
        return f"sub/p{row:03d}" if row % 3 == 2 else f"p{row:03d}"
    if format == "webdataset":
        return f"sample{row:05d}"
    return f"{PARQUET_STEM.format(shard=shard, shards=shards)}/{local:08d}"


def fixture_rows(format, pairs=4, size=8, shards=1, keys=None, missing=(), corrupt=(), empty_instruction=(),
                 null_mask=(), truncate=False, junk=False, json_list=False, **_):
    """What the reader of a fixture written with the same arguments yields, in order."""
    rows = []
    for row in range(pairs):
        key = keys[row] if keys is not None else _default_key(format, row, pairs, shards)
        if format == "anyedit" and json_list:
            key = f"anyedit/{row:08d}"  # keyed by the JSON file's stem
        kind = "JPEG" if format in ("hqedit", "omniedit") else "PNG"
        edited_size = size + 4 if format == "hqedit" else size
        entry = {
            "key": key,
            "original": image(1000 + row, size),
            "edited": image(2000 + row, edited_size, kind),
            "instruction": f"make it look like a painting number {row}",
            "mask": image(3000 + row, size, mode="L") if format in MASK_FORMATS and row not in null_mask else None,
            "action": f"type{row % 3}" if format in ("anyedit", "omniedit", "webdataset") else None,
            "reason": None,
        }
        if format == "omniedit":
            entry["prompts"] = [f"variant {variant} of edit {row}" for variant in range(3)]
            from sigma_fast.io.corpora.omniedit import choose

            entry["instruction"] = choose(key, entry["prompts"])[0]
        if row in empty_instruction:
            entry["instruction"] = "  "
            entry["prompts"] = ["", " "]
            entry["reason"] = "empty instruction"
        if row in corrupt:
            entry["edited"] = CORRUPT
            entry["reason"] = "not an image"
        if row in missing:
            entry["edited"] = None
            entry["reason"] = "edited image"
        rows.append(entry)
    if format == "folder":
        rows.sort(key=lambda entry: entry["key"])  # the reader lists stems sorted
    if truncate and format == "webdataset" and rows:
        rows[-1]["reason"] = "truncated tar member"
    if junk:
        rows.append({"key": None, "reason": "not a readable"})
    return rows


def write_fixture(format, folder, pairs=4, **options):
    """Write a fixture corpus under `folder` (created); returns the input path for open_corpus."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rows = fixture_rows(format, pairs, **options)
    junk_row = rows.pop() if options.get("junk") else None
    writer = {"manifest": _write_manifest, "folder": _write_folder, "webdataset": _write_webdataset}.get(
        format, _write_parquet)
    path = writer(format, folder, rows, **options)
    if junk_row is not None:
        suffix = {"manifest": None, "folder": None, "webdataset": ".tar"}.get(format, ".parquet")
        if suffix is None:
            raise ValueError(f"junk=True is for parquet and tar corpora, not {format}")
        target = path if os.path.isdir(path) else os.path.dirname(path)
        with open(os.path.join(target, f"zzz-junk{suffix}"), "wb") as handle:
            handle.write(b"PAR1 but not really " * 20)
        return target
    return path


# ---------------------------------------------------------------- parquet corpora (HF layout)

def _struct(data, name):
    return None if data is None else {"bytes": data, "path": name}


def _hf_metadata(columns):
    # the `huggingface` schema metadata `datasets` writes, naming the Image features
    features = {name: ({"_type": "Image"} if kind == IMAGE else {"dtype": str(kind), "_type": "Value"})
                for name, kind in columns}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _parquet_table(format, rows, start, image_value):
    # the published columns of each corpus, in their order, for rows[start:]
    def images(role, prefix):
        return [image_value(row[role], f"{prefix}{start + offset}.png", row) for offset, row in enumerate(rows)]

    text = [row["instruction"] for row in rows]
    numbers = [start + offset for offset in range(len(rows))]
    if format == "magicbrush":
        ids, turns = zip(*(row["key"].rsplit("/", 1) for row in rows)) if rows else ((), ())
        columns = [("img_id", pa.string(), list(ids)), ("turn_index", pa.int32(), [int(t) for t in turns]),
                   ("source_img", IMAGE, images("original", "src")), ("mask_img", IMAGE, images("mask", "mask")),
                   ("instruction", pa.string(), text), ("target_img", IMAGE, images("edited", "tgt"))]
    elif format == "instructpix2pix":
        columns = [("original_prompt", pa.string(), [f"a photo {n}" for n in numbers]),
                   ("original_image", IMAGE, images("original", "orig")), ("edit_prompt", pa.string(), text),
                   ("edited_prompt", pa.string(), [f"a painting {n}" for n in numbers]),
                   ("edited_image", IMAGE, images("edited", "edit"))]
    elif format == "ultraedit":
        columns = [("clip_sim_source", pa.float64(), [0.25] * len(rows)),
                   ("clip_sim_dir", pa.float64(), [0.5] * len(rows)),
                   ("dinov2_sim", pa.float64(), [0.75] * len(rows)), ("ssim", pa.float64(), [0.5] * len(rows)),
                   ("source_caption", pa.string(), [f"a photo {n}" for n in numbers]),
                   ("target_caption", pa.string(), [f"a painting {n}" for n in numbers]),
                   ("idx", pa.int64(), numbers), ("edit_prompt", pa.string(), text),
                   ("edit_object", pa.string(), ["cat"] * len(rows)),
                   ("source_image", IMAGE, images("original", "s")), ("edited_image", IMAGE, images("edited", "e")),
                   ("mask_image", IMAGE, images("mask", "m"))]
    elif format == "anyedit":
        columns = [("image_id", pa.string(), [f"img{n // 2}" for n in numbers]),
                   ("edit_instruction", pa.string(), text),
                   ("edit_type", pa.string(), [row["action"] for row in rows]),
                   ("image_file", IMAGE, images("original", "in")), ("edited_file", IMAGE, images("edited", "out")),
                   ("visual_input", IMAGE, [None] * len(rows)),
                   ("input", pa.string(), [f"a photo {n}" for n in numbers]),
                   ("output", pa.string(), [f"a painting {n}" for n in numbers])]
    elif format == "omniedit":
        columns = [("omni_edit_id", pa.string(), [row["key"] for row in rows]),
                   ("task", pa.string(), [row["action"] for row in rows]),
                   ("src_img", IMAGE, images("original", "s")), ("edited_img", IMAGE, images("edited", "e")),
                   ("edited_prompt_list", pa.list_(pa.string()), [row["prompts"] for row in rows]),
                   ("width", pa.int64(), [8] * len(rows)), ("height", pa.int64(), [8] * len(rows)),
                   ("sc_score_1", pa.float64(), [9.0] * len(rows)), ("sc_score_2", pa.float64(), [8.0] * len(rows)),
                   ("sc_reasoning", pa.string(), ["fine"] * len(rows)),
                   ("pq_score", pa.float64(), [7.0] * len(rows)), ("o_score", pa.float64(), [8.5] * len(rows))]
    elif format == "hqedit":
        columns = [("input", pa.string(), [f"a photo {n}" for n in numbers]),
                   ("input_image", IMAGE, images("original", "i")), ("edit", pa.string(), text),
                   ("inverse_edit", pa.string(), [f"undo {n}" for n in numbers]),
                   ("output", pa.string(), [f"a painting {n}" for n in numbers]),
                   ("output_image", IMAGE, images("edited", "o"))]
    else:
        raise ValueError(f"no parquet fixture for format {format!r}")
    # paths=True: image columns hold plain relative paths (strings) instead of structs
    columns = [(name, pa.string() if kind == IMAGE and any(isinstance(value, str) for value in values) else kind,
                values) for name, kind, values in columns]
    schema = pa.schema([(name, kind) for name, kind, _ in columns], metadata=_hf_metadata(
        [(name, kind) for name, kind, _ in columns]))
    return pa.table({name: pa.array(values, kind) for name, kind, values in columns}, schema=schema)


def _write_parquet(format, folder, rows, shards=1, row_group_size=2, paths=False, json_list=False, **_):
    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)

    def as_file(value, name, row):
        # anyedit paths=True/json=True: the image is a file next to the data file
        if value is None:
            return None
        with open(os.path.join(data, "images", name), "wb") as handle:
            handle.write(value)
        return f"images/{name}"

    if paths or json_list:
        os.makedirs(os.path.join(data, "images"), exist_ok=True)
    if json_list:
        if format != "anyedit":
            raise ValueError("json_list=True is for anyedit")
        objects = [{"image_id": f"img{n // 2}", "edit_instruction": row["instruction"], "edit_type": row["action"],
                    "image_file": as_file(row["original"], f"in{n}.png", row),
                    "edited_file": as_file(row["edited"], f"out{n}.png", row)} for n, row in enumerate(rows)]
        path = os.path.join(data, "anyedit.json")
        with open(path, "w") as handle:
            handle.write(json.dumps(objects))
        return path
    value = as_file if paths else (lambda data_, name, row: _struct(data_, name))
    split = _split(len(rows), shards)
    for shard in range(shards):
        members = [row for row, (where, _) in zip(rows, split) if where == shard]
        start = next((n for n, (where, _) in enumerate(split) if where == shard), 0)
        table = _parquet_table(format, members, start, value)
        pq.write_table(table, os.path.join(data, PARQUET_STEM.format(shard=shard, shards=shards) + ".parquet"),
                       row_group_size=row_group_size)
    return os.path.join(data, PARQUET_STEM.format(shard=0, shards=1) + ".parquet") if shards == 1 else data


# ---------------------------------------------------------------- manifest, folder, webdataset

def _put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def _write_manifest(format, folder, rows, csv=False, **_):
    lines = []
    for n, row in enumerate(rows):
        entry = {"key": row["key"], "original": f"images/o{n}.png", "edited": f"images/e{n}.png",
                 "instruction": row["instruction"], "mask": f"images/m{n}.png" if row["mask"] else "",
                 "split": "train"}
        _put(os.path.join(folder, entry["original"]), row["original"])
        if row["edited"] is not None:
            _put(os.path.join(folder, entry["edited"]), row["edited"])
        if row["mask"]:
            _put(os.path.join(folder, entry["mask"]), row["mask"])
        lines.append(entry)
    if csv:
        import csv as csv_module

        path = os.path.join(folder, "pairs.csv")
        with open(path, "w", newline="") as handle:
            writer = csv_module.DictWriter(handle, ["key", "original", "edited", "instruction", "mask", "split"])
            writer.writeheader()
            writer.writerows(lines)
        return path
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as handle:
        handle.writelines(json.dumps(entry) + "\n" for entry in lines)
    return path


def _write_folder(format, folder, rows, txt=False, **_):
    root = os.path.join(folder, "pairs")
    instructions = []
    for row in rows:
        stem = row["key"]
        _put(os.path.join(root, "original", stem + ".png"), row["original"])
        if row["edited"] is not None:
            _put(os.path.join(root, "edited", stem + ".png"), row["edited"])
        if row["mask"] is not None:
            _put(os.path.join(root, "mask", stem + ".png"), row["mask"])
        if txt:
            _put(os.path.join(root, "instruction", stem + ".txt"), row["instruction"].encode())
        else:
            instructions.append(json.dumps({"key": stem, "instruction": row["instruction"], "source": "fixture"}))
    if not txt:
        with open(os.path.join(root, "instructions.jsonl"), "w") as handle:
            handle.writelines(line + "\n" for line in instructions)
    return root


def _write_webdataset(format, folder, rows, shards=1, truncate=False, **_):
    data = os.path.join(folder, "shards")
    os.makedirs(data, exist_ok=True)
    split = _split(len(rows), shards)
    paths = []
    for shard in range(shards):
        path = os.path.join(data, f"shard-{shard:05d}.tar")
        with tarfile.open(path, "w") as archive:
            for row, (where, _) in zip(rows, split):
                if where != shard:
                    continue
                info = json.dumps({"instruction": row["instruction"], "edit_type": row["action"]}).encode()
                members = [("src.png", row["original"]), ("edit.png", row["edited"]), ("json", info),
                           ("mask.png", row["mask"])]
                for suffix, value in members:
                    if value is None:
                        continue
                    info = tarfile.TarInfo(f"{row['key']}.{suffix}")
                    info.size, info.mtime = len(value), 0
                    archive.addfile(info, io.BytesIO(value))
        paths.append(path)
    if truncate:
        with tarfile.open(paths[-1]) as archive:
            last = archive.getmembers()[-1]
        with open(paths[-1], "r+b") as handle:
            handle.truncate(last.offset_data + last.size // 2)
    return paths[0] if shards == 1 else data


# ---------------------------------------------------------------- benchmarks with ground-truth masks

BENCHMARK_LABELS = {"sid_set": (2, 0, 1, 2), "opensdi": (1, 0, 1, 0), "cocoglide": (1, 1, 1, 0),
                    "benco_json": (1, 0, 1, 1), "benco_mani": (1, 1, 1, 1), "autosplice": (1, 1, 1, 1)}
BENCHMARK_TAMPERED = {"sid_set": (2,)}


def benchmark_rows(format, size=8):
    """What a benchmark reader yields for `write_benchmark(format, ...)`, in order: dicts with key,
    original (None: single-image), edited, mask (None: authentic), label, tampered, instruction, quality."""
    rows = []
    for row, label in enumerate(BENCHMARK_LABELS[format]):
        tampered = label in BENCHMARK_TAMPERED.get(format, (1,))
        entry = {"key": f"img{row:03d}", "original": None, "edited": image(5000 + row, size),
                 "mask": image(6000 + row, size, mode="L") if tampered else None, "label": label,
                 "tampered": tampered, "instruction": "", "quality": None}
        if format == "cocoglide":
            entry["key"] = f"{'fake' if label else 'real'}/img{row:03d}"
        if format == "benco_json":
            entry["key"] = f"images/img{row:03d}.png"
        if format == "autosplice":  # photo row // 2, edits 0 and 1; two qualities, 100 read first
            quality, photo, edit = (100, 90)[row // 2], row % 2, 0
            entry.update(key=f"Q{quality}/{photo}_{edit}", quality=quality, original=image(7000 + photo, size),
                         edited=image(5000 + row, size, kind="JPEG"), mask=image(6000 + photo, size, mode="L"),
                         instruction=f"put a hat on photo {photo}")
        rows.append(entry)
    return sorted(rows, key=lambda entry: entry["key"]) if format == "cocoglide" else rows


def write_benchmark(format, folder, size=8):
    """Write a small benchmark in its published layout under `folder`; returns the input path."""
    folder = os.fspath(folder)
    rows = benchmark_rows(format, size)
    if format in ("sid_set", "opensdi"):
        name = {"sid_set": ("img_id", "data/train-00000-of-00001.parquet"),
                "opensdi": ("key", "sdxl/test-00000-of-00001.parquet")}[format]
        columns = [(name[0], pa.string(), [row["key"] for row in rows]),
                   ("image", IMAGE, [_struct(row["edited"], f"{row['key']}.png") for row in rows]),
                   ("mask", IMAGE, [_struct(row["mask"], f"{row['key']}_m.png") for row in rows]),
                   ("label", pa.int64(), [row["label"] for row in rows])]
        schema = pa.schema([(n, k) for n, k, _ in columns], metadata=_hf_metadata([(n, k) for n, k, _ in columns]))
        path = os.path.join(folder, name[1])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table({n: pa.array(v, k) for n, k, v in columns}, schema=schema), path, row_group_size=2)
        return path
    if format == "cocoglide":
        for row in rows:
            _put(os.path.join(folder, "CocoGlide", row["key"] + ".png"), row["edited"])
            if row["mask"] is not None:
                _put(os.path.join(folder, "CocoGlide", "mask", row["key"].split("/")[1] + ".png"), row["mask"])
        return os.path.join(folder, "CocoGlide")
    if format == "benco_json":
        entries = []
        for row in rows:
            _put(os.path.join(folder, row["key"]), row["edited"])
            if row["mask"] is not None:
                _put(os.path.join(folder, "masks", os.path.basename(row["key"])), row["mask"])
            entries.append([row["key"], "masks/" + os.path.basename(row["key"]) if row["mask"] else "Negative"])
        with open(os.path.join(folder, "test.json"), "w") as handle:
            json.dump(entries, handle)
        return os.path.join(folder, "test.json")
    if format == "benco_mani":
        for row in rows:
            _put(os.path.join(folder, "bench", "Tp", row["key"] + ".png"), row["edited"])
            _put(os.path.join(folder, "bench", "Gt", row["key"] + ".png"), row["mask"])
        return os.path.join(folder, "bench")
    if format == "autosplice":
        root = os.path.join(folder, "AutoSplice")
        for row in rows:
            photo = row["key"].split("/")[1].split("_")[0]
            _put(os.path.join(root, f"Forged_JPEG{row['quality']}", row["key"].split("/")[1] + ".jpg"), row["edited"])
            _put(os.path.join(root, "Authentic", f"{photo}.jpg"), row["original"])
            _put(os.path.join(root, "Mask", f"{photo}_mask.png"), row["mask"])
            _put(os.path.join(root, "Caption", f"{photo}.json"), json.dumps({"caption": row["instruction"]}).encode())
        return root
    raise ValueError(f"no benchmark fixture for format {format!r}")
