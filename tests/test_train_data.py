import io

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_fast.train.config import SourceConfig
from sigma_fast.train.data import NegativeSettings, load_training_mask, open_source
from sigma_fast.train.stream import PairStream, make_loader
from train_helpers import make_pair, png_bytes, rgba_mask, write_manifest, write_parquet

SIZE = 56


def parquet_source(path, need_mask=True, **values):
    config = SourceConfig(format="parquet", path=str(path), **values)
    config.validate("test")
    return open_source(config, need_mask)


def stream(sources, global_batch=4, rank=0, world=1, start=0, finite=False, negatives=None, seed=0):
    return PairStream(sources, SIZE, global_batch, rank, world, seed, 0, True, negatives, start, finite, 2)


def expected_mask(mask):
    resized = torch.nn.functional.interpolate(torch.from_numpy(mask / 255.0).float()[None, None], (SIZE, SIZE),
                                              mode="bilinear", antialias=True, align_corners=False)
    return (resized[0, 0] > 0.5).float()


def test_mask_rule_rgba_white_on_black_any_size():
    _, _, mask, _ = make_pair(3)
    reference = expected_mask(mask)
    rgba = rgba_mask(mask)
    half = np.asarray(Image.fromarray(rgba).resize((32, 32), Image.NEAREST))
    for source in (png_bytes(mask), png_bytes(rgba, "RGBA"), png_bytes(half, "RGBA")):
        got = load_training_mask(source, SIZE)
        assert got.shape == (SIZE, SIZE) and set(got.unique().tolist()) <= {0.0, 1.0}
        iou = (got * reference).sum() / ((got + reference) > 0).sum()
        assert iou > 0.9
    # white but fully transparent pixels are not edited: the mask is composited over black
    transparent = rgba.copy()
    transparent[..., :3] = 255
    transparent[..., 3] = 0
    assert load_training_mask(png_bytes(transparent, "RGBA"), SIZE).sum() == 0


def test_parquet_rows_stream_by_row_group(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", 20, row_group_size=8)
    source = parquet_source(path)
    assert source.block_sizes() == [8, 8, 4]
    original, edited, mask, instruction = make_pair(13)
    row = source.row(1, 5)  # row 13
    assert row.instruction == instruction
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(row.original))), original)
    assert parquet_source(path, limit=10).block_sizes() == [8, 2]


def test_parquet_missing_column_is_a_clear_error(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", 4)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['edited_image'\]"):
        parquet_source(path, columns={"edited": "edited_image"})


def test_batches_do_not_depend_on_workers_or_ranks_and_resume_by_index(tmp_path):
    source = parquet_source(write_parquet(tmp_path / "train.parquet", 24, row_group_size=6))
    single = [b for b, _ in zip(stream([source], global_batch=4), range(8))]
    with_workers = [b for b, _ in zip(make_loader(stream([source], global_batch=4), 2, False), range(8))]
    for a, b in zip(single, with_workers):
        assert a["index"] == b["index"] and a["instruction"] == b["instruction"]
        assert torch.equal(a["edited"], b["edited"])
    # ranks split each global batch
    rank0 = next(iter(stream([source], global_batch=4, rank=0, world=2)))
    rank1 = next(iter(stream([source], global_batch=4, rank=1, world=2)))
    assert torch.equal(torch.cat([rank0["original"], rank1["original"]]), single[0]["original"])
    # resuming at batch 5 (with workers) continues the sequence
    resumed = [b for b, _ in zip(make_loader(stream([source], global_batch=4, start=5), 2, False), range(3))]
    assert [b["index"] for b in resumed] == [5, 6, 7]
    for a, b in zip(single[5:], resumed):
        assert torch.equal(a["original"], b["original"]) and torch.equal(a["mask"], b["mask"])
    # 24 rows / 4 = 6 batches an epoch: an epoch visits every row once, the next one reshuffles
    epoch = [text for batch in single[:6] for text in batch["instruction"]]
    assert sorted(epoch) == sorted(make_pair(i)[3] for i in range(24))
    assert [b["instruction"] for b in single[6:8]] != [b["instruction"] for b in single[:2]]


def test_corrupt_rows_are_skipped_and_reported(tmp_path):
    source = parquet_source(write_parquet(tmp_path / "train.parquet", 8, corrupt={2, 5}))
    batches = list(stream([source], global_batch=4, finite=True))
    assert sum(b["original"].shape[0] for b in batches) == 6
    failures = [f for b in batches for f in b["failures"]]
    assert len(failures) == 2 and all(f.startswith(("train/00000002:", "train/00000005:")) for f in failures)


def test_negatives_have_empty_targets(tmp_path):
    source = parquet_source(write_parquet(tmp_path / "train.parquet", 16))
    negatives = NegativeSettings(fraction=0.5, reencode_fraction=0.5, quality=(85, 95))
    batches = [b for b, _ in zip(stream([source], global_batch=8, negatives=negatives), range(4))]
    kinds = [kind for b in batches for kind in b["kind"]]
    assert 0 < kinds.count("negative") < len(kinds)
    identical = reencoded = 0
    for batch in batches:
        for index, kind in enumerate(batch["kind"]):
            if kind == "negative":
                assert batch["mask"][index].sum() == 0
                difference = (batch["original"][index].float() - batch["edited"][index].float()).abs()
                assert difference.mean() < 4  # the original itself or a mild re-encode of it
                identical += int(difference.max() == 0)
                reencoded += int(difference.max() > 0)
            else:
                assert batch["mask"][index].sum() > 0
    assert identical and reencoded


def test_manifest_source_with_masks(tmp_path):
    config = SourceConfig(format="manifest", path=write_manifest(tmp_path / "pairs", 6))
    config.validate("test")
    batch = next(iter(stream([open_source(config, True)], global_batch=6, finite=True)))
    assert batch["original"].shape == (6, SIZE, SIZE, 3) and batch["original"].dtype == torch.uint8
    assert batch["mask"].shape == (6, SIZE, SIZE) and (batch["mask"].sum((1, 2)) > 0).all()
    assert batch["edit"][0].action == "add"
    unlabelled = PairStream([open_source(config, False)], SIZE, 6, 0, 1, 0, 1, False, None, 0, True)
    assert "mask" not in next(iter(unlabelled))
