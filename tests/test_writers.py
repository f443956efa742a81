"""The output side without a model: safe names, the shard protocol, settings refusal, image copies,
tar determinism, quality flags, and hostile keys through every writer."""
import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_fast.annotate import Annotation
from sigma_fast.grounding import parse_instruction
from sigma_fast.io.corpora import PairRecord
from sigma_fast.io.images import decode_image
from sigma_fast.io.messages import one_line
from sigma_fast.io.writers import benco, quality
from sigma_fast.io.writers.names import MAX_NAME, safe_name
from sigma_fast.io.writers.output import ShardWriter, finish_run
from sigma_fast.io.writers.shards import done_shards, prepare_output
from sigma_fast.io.writers.webdataset import TarShard

HOSTILE = ["../../etc/passwd", "/abs/path", "C:\\Windows\\x", "a\x00b", "k" * 300, "é/ü" * 80, "a/b", "a_b",
           "a:b", "..", ".", "", "CON", "a_b-0123456789", "x.y.z", "same key", "same key"]


def encoded(array, fmt="PNG", **params):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_safe_names_are_safe_distinct_and_stable():
    names = [safe_name(key) for key in HOSTILE[:-1]]
    assert len(set(names)) == len(names)
    for name in names:
        assert name and len(name.encode()) <= MAX_NAME and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    assert safe_name("demo_1_add") == "demo_1_add"  # a key that is already safe stays as it is
    assert safe_name("a/b") == safe_name("a/b") != safe_name("a_b")
    with pytest.raises(TypeError):
        safe_name(3)


def test_settings_difference_is_refused_and_overwrite_starts_over(tmp_path):
    settings = {"threshold": 0.5, "shard_size": 4}
    prepare_output(str(tmp_path), settings)
    prepare_output(str(tmp_path), dict(settings))  # the same settings resume
    (tmp_path / "shards" / "00000").mkdir()
    (tmp_path / "shards" / "00000" / "done.json").write_text('{"rows": 4}')
    (tmp_path / "keep.txt").write_text("not ours")
    with pytest.raises(ValueError, match=r"threshold 0\.5 -> 0\.6") as error:
        prepare_output(str(tmp_path), {**settings, "threshold": 0.6})
    assert "\n" not in str(error.value) and "--overwrite" in str(error.value)
    assert done_shards(str(tmp_path)) == {0: {"rows": 4}}
    prepare_output(str(tmp_path), {**settings, "threshold": 0.6}, overwrite=True)
    assert done_shards(str(tmp_path)) == {} and (tmp_path / "keep.txt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["threshold"] == 0.6


def test_images_a_convert_rgb_reader_would_misread_are_copied_as_rgb_png():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    jpeg = encoded(rgb, "JPEG", quality=90)
    assert benco.image_copy(jpeg, decode_image(jpeg))[::2] == ("jpg", "bytes")
    assert benco.image_copy(jpeg, decode_image(jpeg))[1] == jpeg
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encoded(rgb, "JPEG", exif=exif.tobytes())
    sixteen = encoded(np.full((12, 16), 40000, np.uint16))
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    palette = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(palette, format="PNG")
    for data in (rotated, sixteen, cmyk.getvalue(), palette.getvalue()):
        decoded = decode_image(data)
        ext, payload, how = benco.image_copy(data, decoded)
        assert (ext, how) == ("png", "rgb_png")
        # what IMDL-BenCo's pil_loader reads is exactly what the model annotated
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")), decoded.pixels.numpy())


def test_tar_shards_are_deterministic(tmp_path):
    for run in ("a", "b"):
        tar = TarShard(str(tmp_path / run / "shard-00000.tar"))
        tar.add("k2", {"json": b"{}", "orig.png": b"o", "edit.jpg": b"e"})
        tar.add("k1", {"mask.png": b"m"})
        tar.close()
    first = (tmp_path / "a" / "shard-00000.tar").read_bytes()
    assert first == (tmp_path / "b" / "shard-00000.tar").read_bytes()
    with tarfile.open(tmp_path / "a" / "shard-00000.tar") as handle:
        members = handle.getmembers()
    assert [m.name for m in members] == ["k2.edit.jpg", "k2.json", "k2.orig.png", "k1.mask.png"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert not list(tmp_path.glob("*/.*partial"))


def test_regenerated_flag_separates_local_from_global_edits():
    original = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 20:50] = 255
    local = original.clone()
    local[10:30, 20:50] = 0
    assert quality.changed_outside(original, local, mask) == 0.0
    assert not quality.is_regenerated(quality.changed_outside(original, local, mask))
    brighter = (original.float() * 0.8).to(torch.uint8)
    assert quality.is_regenerated(quality.changed_outside(original, brighter, mask))
    assert quality.changed_outside(original, brighter, np.full((64, 80), 255, np.uint8)) is None
    assert quality.filter_reason(0.2, False, min_score=0.5) == "min_score"
    assert quality.filter_reason(0.9, True, drop_regenerated=True) == "regenerated"
    assert quality.filter_reason(0.9, True) is None
    assert one_line("cannot identify <_io.BytesIO object at 0x7f3a2b>\n") == "cannot identify <_io.BytesIO object>"


def fake_annotation(height, width, seed):
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2, : width // 3 + seed % 3] = 255
    prob = mask.astype(np.float32) / 255
    return Annotation(mask, prob, 0.8, parse_instruction("add a hat"), prior=np.full((4, 4), 0.5, np.float32))


def write_hostile_shards(out, writers):
    prepare_output(str(out), {"writers": list(writers), "negatives": True})
    rgb = np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    original, edited = encoded(rgb), encoded(255 - rgb, "JPEG")
    with ThreadPoolExecutor(2) as pool:
        for shard in range(2):
            writer = ShardWriter(str(out), shard, pool, writers=writers, window=3)
            for index in range(shard * 9, min(len(HOSTILE), shard * 9 + 9)):
                key = HOSTILE[index]
                if index == 4:
                    writer.fail(index, key, "corpus.tar", "edited image: not a readable image (x at 0xdeadbeef)")
                    continue
                record = PairRecord(index, key, original, edited, "add a hat", meta={"source": "corpus.tar"})
                writer.add(record, fake_annotation(10, 14, index), decode_image(original), decode_image(edited))
            writer.close()
    return finish_run(str(out), 2, writers, negatives=True, manidataset="benco" in writers)


@pytest.mark.parametrize("writers", [("benco",), ("webdataset",), ("benco", "webdataset")])
def test_hostile_keys_stay_inside_out_through_every_writer(tmp_path, writers):
    out = tmp_path / "deep" / "out"
    stats, entries = write_hostile_shards(out, writers)
    written = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
    assert all(path.startswith(str(out) + os.sep) for path in written)
    assert not [path for path in written if "partial" in path or path.endswith(".tmp")]
    rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
    assert [row["key"] for row in rows] == [key for i, key in enumerate(HOSTILE) if i != 4]  # keys kept verbatim
    assert [row["index"] for row in rows] == sorted(row["index"] for row in rows)
    assert len({row["name"] for row in rows}) == len(rows)  # the repeated key too
    failures = [json.loads(line) for line in open(out / "failures.jsonl")]
    assert failures == [{"index": 4, "key": HOSTILE[4], "source": "corpus.tar",
                         "reason": "edited image: not a readable image (x)"}]
    assert stats["rows"] == len(HOSTILE) and stats["failed"] == 1 and stats["by_skip_reason"] == {"edited image": 1}
    if "benco" in writers:
        dataset = json.loads((out / "dataset.json").read_text())
        assert entries == len(dataset) == 2 * len(rows)
        for image, mask in dataset[::2]:
            assert os.path.isfile(image) and Image.open(mask).size == Image.open(image).size
        assert sorted(os.listdir(out / "benco" / "Tp"))[0].rsplit(".", 1)[0] == \
            sorted(os.listdir(out / "benco" / "Gt"))[0].rsplit(".", 1)[0]
        assert len(os.listdir(out / "benco" / "Gt")) == len(rows)
    if "webdataset" in writers:
        names = []
        for shard in range(2):
            with tarfile.open(out / "webdataset" / f"shard-{shard:05d}.tar") as handle:
                names += handle.getnames()
                sample = json.loads(handle.extractfile(handle.getnames()[1]).read())
                assert sample["key"] in HOSTILE and "score" in sample and "regenerated" in sample
        assert len(names) == 4 * len(rows)
        assert all("/" not in name and ".." not in name and name.count(".") in (1, 2) for name in names)


def test_relocate_rewrites_dataset_paths(tmp_path):
    write_hostile_shards(tmp_path / "a", ("benco",))
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert all(path.startswith(str(tmp_path / "a")) for path, _ in moved)
    entries = benco.relocate(str(tmp_path / "b"))
    dataset = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert entries == len(dataset) > 0
    assert all(os.path.isfile(image) and image.startswith(str(tmp_path / "b")) for image, _ in dataset)
    with pytest.raises(FileNotFoundError):
        benco.relocate(str(tmp_path / "nothing"))
