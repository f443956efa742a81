import io

import numpy as np
import pytest
import torch
from PIL import Image

from corpus_fixtures import benchmark_rows, write_benchmark, write_fixture
from sigma_fast.io.corpora import BENCHMARK_FORMATS, FORMATS, PairRecord, RowFailure, open_corpus
from sigma_fast.io.corpora.opensdi import split_of
from sigma_fast.metrics import load_ground_truth, mask_rule


@pytest.mark.parametrize("format", BENCHMARK_FORMATS)
def test_benchmark_reader_reads_its_fixture(format, tmp_path):
    corpus = open_corpus(write_benchmark(format, tmp_path), format=format)
    items = list(corpus)
    expected = benchmark_rows(format)
    assert len(corpus) == len(items) == len(expected)
    for item, want in zip(items, expected):
        assert isinstance(item, PairRecord), item
        assert (item.key, item.original, item.edited, item.mask) == (want["key"], want["original"], want["edited"],
                                                                      want["mask"])
        assert item.instruction == want["instruction"] and item.meta["format"] == format
        if want["original"] is None:
            assert item.meta["single_image"] is True
            assert (item.meta["label"], item.meta["tampered"]) == (want["label"], want["tampered"])
        else:
            assert item.meta["jpeg_quality"] == want["quality"]
    tail = [(item.index, item.key) for item in items]
    assert [(item.index, item.key) for item in corpus.records(2)] == tail[2:]


def test_benchmarks_are_named_not_detected(tmp_path):
    assert not set(BENCHMARK_FORMATS) & set(FORMATS)
    with pytest.raises(ValueError, match="cannot detect"):
        open_corpus(write_benchmark("sid_set", tmp_path))
    with pytest.raises(ValueError, match="unknown corpus format"):
        open_corpus(write_benchmark("sid_set", tmp_path), format="sidset")


def test_autosplice_one_quality_folder_and_missing_files(tmp_path):
    root = write_benchmark("autosplice", tmp_path)
    keys = [item.key for item in open_corpus(f"{root}/Forged_JPEG90", format="autosplice")]
    assert keys == ["Q90/0_0", "Q90/1_0"]
    (tmp_path / "AutoSplice" / "Mask" / "1_mask.png").unlink()
    items = list(open_corpus(root, format="autosplice"))
    assert [isinstance(item, RowFailure) for item in items] == [False, True, False, True]
    assert "no Mask/ file for photo 1" in items[1].reason


def test_opensdi_split_from_path():
    assert split_of("/d/OpenSDI_test/sd15/test-00000-of-00002.parquet") == "sd15"
    assert split_of("hf://datasets/nebula/OpenSDI_test/data/flux-00001-of-00003.parquet") == "flux"
    assert split_of("/d/other/train.parquet") is None


def test_benco_layouts_fail_rows_not_reads(tmp_path):
    path = write_benchmark("benco_json", tmp_path)
    (tmp_path / "masks" / "img002.png").unlink()
    items = list(open_corpus(path, format="benco_json"))
    assert isinstance(items[2], RowFailure) and "mask" in items[2].reason
    root = write_benchmark("benco_mani", tmp_path / "mani")
    (tmp_path / "mani" / "bench" / "Gt" / "img003.png").unlink()
    items = list(open_corpus(root, format="benco_mani"))
    assert isinstance(items[3], RowFailure) and "no Gt/ file" in items[3].reason


def rgba_png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_magicbrush_and_ultraedit_masks_come_through(tmp_path):
    for format in ("magicbrush", "ultraedit"):
        items = list(open_corpus(write_fixture(format, tmp_path / format, pairs=2)))
        assert all(item.mask is not None and Image.open(io.BytesIO(item.mask)).size == (8, 8) for item in items)
        assert mask_rule(format) == ("luminance_alpha" if format == "magicbrush" else "benco")
    # a MagicBrush-style mask: white where painted, transparent elsewhere, stored white underneath
    pixels = np.full((4, 4, 4), 255, np.uint8)
    pixels[..., 3] = 0
    pixels[1:3, 1:3, 3] = 255
    mask = load_ground_truth(rgba_png(pixels), size=(4, 4), rule=mask_rule("magicbrush"))
    assert mask.sum() == 4 and mask[1:3, 1:3].all()


def test_imdlbenco_reads_benchmark_masks_as_we_do(tmp_path, monkeypatch):
    from imdlbenco import imdlbenco_datasets

    datasets = imdlbenco_datasets()
    path = write_benchmark("benco_json", tmp_path)
    monkeypatch.chdir(tmp_path)  # IMDL-BenCo opens the listed paths from the working directory
    theirs = datasets.JsonDataset(path, is_resizing=True, output_size=(8, 8))
    ours = list(open_corpus(path, format="benco_json"))
    assert len(theirs) == len(ours)
    for index, record in enumerate(ours):
        item = theirs[index]
        assert item["label"] == record.meta["label"]
        gt = torch.zeros(8, 8, dtype=torch.bool) if record.mask is None else load_ground_truth(record.mask, (8, 8))
        np.testing.assert_array_equal(np.asarray(item["mask"])[0] > 0.5, gt.numpy())
