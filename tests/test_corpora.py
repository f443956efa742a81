"""Corpus readers on small fixtures in each published schema (tests/corpus_fixtures.py)."""
import glob
import os

import pyarrow.parquet as pq
import pytest

from corpus_fixtures import fixture_rows, image, write_fixture
from sigma_fast.io.corpora import FORMATS, PairRecord, RowFailure, open_corpus
from sigma_fast.io.corpora.omniedit import choose

SHARDED = ("magicbrush", "instructpix2pix", "ultraedit", "anyedit", "omniedit", "hqedit", "webdataset")
MASKED = ("magicbrush", "ultraedit", "manifest", "folder", "webdataset")


def options(format):
    return {"shards": 2} if format in SHARDED else {}


def check(items, expected):
    assert [item.index for item in items] == list(range(len(expected)))
    for item, want in zip(items, expected):
        if want["reason"] is None:
            assert isinstance(item, PairRecord), item
            assert (item.key, item.instruction) == (want["key"], want["instruction"])
            assert item.original == want["original"] and item.edited == want["edited"]
            assert item.mask == want["mask"]
        else:
            assert isinstance(item, RowFailure), item
            assert want["reason"] in item.reason, item
            if want["key"] is not None:
                assert item.key == want["key"]


@pytest.mark.parametrize("format", FORMATS)
def test_reader_reads_its_fixture_in_order_and_detects_it(format, tmp_path):
    path = write_fixture(format, tmp_path, pairs=5, **options(format))
    corpus = open_corpus(path)
    assert corpus.format == format
    items = list(corpus)
    check(items, fixture_rows(format, pairs=5, **options(format)))
    assert all(item.meta["format"] == format for item in items)
    if format == "webdataset":
        assert corpus.total() is None
        with pytest.raises(TypeError):
            len(corpus)
    else:
        assert len(corpus) == corpus.total() == 5


@pytest.mark.parametrize("format", FORMATS)
def test_records_from_start_equal_the_tail(format, tmp_path):
    corpus = open_corpus(write_fixture(format, tmp_path, pairs=5, **options(format)), format=format)
    full = [(item.index, item.key, item.edited) for item in corpus]
    for start in (0, 2, 3, 5, 9):
        assert [(item.index, item.key, item.edited) for item in corpus.records(start)] == full[start:]


@pytest.mark.parametrize("format", FORMATS)
def test_limit_stops_after_limit_rows(format, tmp_path):
    corpus = open_corpus(write_fixture(format, tmp_path, pairs=5, **options(format)), limit=3)
    assert [item.index for item in corpus] == [0, 1, 2]
    assert [item.index for item in corpus.records(2)] == [2]
    if format != "webdataset":
        assert len(corpus) == 3


@pytest.mark.parametrize("format", FORMATS)
def test_bad_rows_are_failures_and_reading_goes_on(format, tmp_path):
    faults = {"missing": (0,), "corrupt": (2,), "empty_instruction": (3,),
              "null_mask": (1, 4) if format in MASKED else ()}
    corpus = open_corpus(write_fixture(format, tmp_path, pairs=6, **faults, **options(format)))
    items = list(corpus)
    expected = fixture_rows(format, pairs=6, **faults, **options(format))
    check(items, expected)
    assert sum(isinstance(item, RowFailure) for item in items) == 3
    if format in MASKED:
        masks = {item.key: item.mask for item in items if isinstance(item, PairRecord)}
        assert sum(mask is None for mask in masks.values()) == 2


@pytest.mark.parametrize("format", ["magicbrush", "hqedit", "webdataset"])
def test_a_file_that_is_not_parquet_or_tar_is_one_failure(format, tmp_path):
    path = write_fixture(format, tmp_path, pairs=3, junk=True)
    corpus = open_corpus(path)
    items = list(corpus)
    check(items, fixture_rows(format, pairs=3, junk=True))
    assert items[-1].source.endswith("zzz-junk" + (".tar" if format == "webdataset" else ".parquet"))
    if format != "webdataset":
        assert len(corpus) == len(items) == 4
    assert [item.key for item in corpus.records(3)] == [items[-1].key]


def test_truncated_tar_member_is_one_failure_then_the_next_shard(tmp_path):
    path = write_fixture("webdataset", tmp_path, pairs=4, shards=2, truncate=True)
    shards = sorted(glob.glob(os.path.join(path, "*.tar")))
    # the truncated shard first, a sound one after it
    os.rename(shards[1], os.path.join(path, "a-truncated.tar"))
    items = list(open_corpus(path))
    assert [type(item).__name__ for item in items] == ["PairRecord", "RowFailure", "PairRecord", "PairRecord"]
    assert "truncated tar member" in items[1].reason and items[1].key == "sample00003"
    assert [item.key for item in items] == ["sample00002", "sample00003", "sample00000", "sample00001"]


def test_parquet_missing_columns_fail_every_row(tmp_path):
    write_fixture("hqedit", tmp_path / "a", pairs=2)
    write_fixture("magicbrush", tmp_path / "b", pairs=3)
    items = list(open_corpus(str(tmp_path / "*" / "data" / "*.parquet"), format="hqedit"))
    assert [type(item).__name__ for item in items] == ["PairRecord"] * 2 + ["RowFailure"] * 3
    assert "missing column(s)" in items[-1].reason


def test_records_skip_whole_row_groups_and_files(tmp_path, monkeypatch):
    path = write_fixture("instructpix2pix", tmp_path, pairs=8, shards=2, row_group_size=2)
    read = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        read.append(tuple(row_groups))
        return original(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    items = list(open_corpus(path).records(7))
    assert [item.index for item in items] == [7]
    assert read == [(1,)]  # second file's second row group only


def test_magicbrush_meta_and_key(tmp_path):
    item = next(iter(open_corpus(write_fixture("magicbrush", tmp_path, pairs=2))))
    assert item.key == "100/1" and item.meta["turn"] == 1 and item.meta["img_id"] == "100"
    assert item.meta["source"].endswith(".parquet") and item.meta["row"] == 0


def test_omniedit_instruction_choice_is_by_key_and_scores_stay(tmp_path):
    items = list(open_corpus(write_fixture("omniedit", tmp_path, pairs=6)))
    positions = {item.meta["prompt_index"] for item in items}
    assert len(positions) > 1  # the choice varies with the key, not fixed to one entry
    for item in items:
        assert item.instruction == item.meta["edited_prompt_list"][item.meta["prompt_index"]]
        assert item.meta["action"] == item.meta["task"] and item.meta["pq_score"] == 7.0
    assert choose("k", ["", "only"]) == ("only", 1) and choose("k", ["", " "]) == (None, None)


def test_action_and_extra_columns_in_meta(tmp_path):
    anyedit = list(open_corpus(write_fixture("anyedit", tmp_path / "a", pairs=2)))
    assert [item.meta["action"] for item in anyedit] == ["type0", "type1"]
    assert "visual_input" not in anyedit[0].meta and anyedit[0].meta["input"] == "a photo 0"
    ip2p = next(iter(open_corpus(write_fixture("instructpix2pix", tmp_path / "b", pairs=1))))
    assert (ip2p.meta["original_prompt"], ip2p.meta["edited_prompt"]) == ("a photo 0", "a painting 0")
    wds = next(iter(open_corpus(write_fixture("webdataset", tmp_path / "c", pairs=1))))
    assert wds.meta["action"] == "type0" and wds.meta["members"][0] == "sample00000.src.png"


@pytest.mark.parametrize("layout", [{"paths": True}, {"json_list": True}])
def test_anyedit_image_paths_relative_to_the_file(layout, tmp_path):
    path = write_fixture("anyedit", tmp_path, pairs=3, missing=(1,), **layout)
    corpus = open_corpus(path)
    assert corpus.format == "anyedit"
    items = list(corpus)
    check(items, fixture_rows("anyedit", pairs=3, missing=(1,), **layout))
    assert items[0].meta["original_path"] == os.path.join(os.path.dirname(path), "images", "in0.png")


def test_manifest_rules(tmp_path):
    (tmp_path / "a.png").write_bytes(image(1))
    (tmp_path / "b.png").write_bytes(image(2))
    lines = ['{"key": "x/../y", "original": "a.png", "edited": "b.png", "instruction": "go"}',
             '{"key": "x/../y", "original": "a.png", "edited": "b.png", "instruction": "again"}',
             'not json', '', '[1, 2]',
             '{"original": "a.png", "instruction": "no edited"}',
             '{"original": "a.png", "edited": "gone.png", "instruction": "missing file"}',
             '{"original": "a.png", "edited": "b.png", "instruction": "ok", "note": 3}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    corpus = open_corpus(str(tmp_path / "m.jsonl"))
    items = list(corpus)
    assert len(corpus) == len(items) == 7  # the blank line is not a row
    assert [item.key for item in items] == ["x/../y", "x/../y", "line00000003", "line00000005", "line00000006",
                                            "line00000007", "line00000008"]
    reasons = [getattr(item, "reason", None) for item in items]
    assert reasons[0] is None and "duplicate key" in reasons[1] and "invalid JSON" in reasons[2]
    assert "JSON object" in reasons[3] and "missing field" in reasons[4] and "cannot read edited" in reasons[5]
    assert items[6].meta["original_path"] == str(tmp_path / "a.png") and items[6].meta["note"] == 3
    assert [item.key for item in corpus.records(1)][0] == "x/../y"  # still a duplicate when skipped to


def test_manifest_csv_and_folder_txt(tmp_path):
    check(list(open_corpus(write_fixture("manifest", tmp_path / "c", pairs=3, csv=True, empty_instruction=(1,)))),
          fixture_rows("manifest", pairs=3, empty_instruction=(1,)))
    check(list(open_corpus(write_fixture("folder", tmp_path / "f", pairs=4, txt=True, null_mask=(0,)))),
          fixture_rows("folder", pairs=4, null_mask=(0,)))


def test_globs_directories_and_lists(tmp_path):
    write_fixture("ultraedit", tmp_path, pairs=6, shards=3)
    data = tmp_path / "data"
    expected = [item.key for item in open_corpus(str(data))]
    assert len(expected) == 6
    assert [item.key for item in open_corpus(str(data / "train-*.parquet"))] == expected
    files = sorted(str(path) for path in data.glob("*.parquet"))
    assert [item.key for item in open_corpus(files[::-1])][:2] == expected[4:]  # a list keeps its order
    assert open_corpus(str(data / "**" / "*.parquet")).sources == files


def test_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        open_corpus(str(tmp_path / "nothing-*.parquet"))
    with pytest.raises(FileNotFoundError):
        open_corpus(str(tmp_path / "absent.jsonl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot detect"):
        open_corpus(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="unknown corpus format"):
        open_corpus(str(tmp_path / "notes.txt"), format="coco")
    with pytest.raises(ValueError, match="limit"):
        open_corpus(str(tmp_path / "notes.txt"), format="manifest", limit=-1)


def test_fsspec_memory_urls(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for format in ("omniedit", "webdataset"):
        local = write_fixture(format, tmp_path / format, pairs=4, shards=2)
        for path in sorted(glob.glob(os.path.join(local, "*"))):
            memory.pipe(f"/corpora/{format}/{os.path.basename(path)}", open(path, "rb").read())
        expected = [(item.key, item.edited) for item in open_corpus(local)]
        for url in (f"memory://corpora/{format}", f"memory://corpora/{format}/*"):
            corpus = open_corpus(url)
            assert corpus.format == format and all(source.startswith("memory://") for source in corpus.sources)
            assert [(item.key, item.edited) for item in corpus] == expected
    local = write_fixture("manifest", tmp_path / "m", pairs=2)
    for path in glob.glob(os.path.join(os.path.dirname(local), "**", "*.*"), recursive=True):
        memory.pipe("/corpora/m/" + os.path.relpath(path, os.path.dirname(local)), open(path, "rb").read())
    items = list(open_corpus("memory://corpora/m/pairs.jsonl"))
    assert [item.key for item in items] == ["pair000", "pair001"] and "original_path" not in items[0].meta


def test_hostile_keys_come_back_verbatim(tmp_path):
    keys = ["../../etc/passwd", "C:/x/" + "k" * 250]
    for format in ("webdataset", "manifest", "omniedit"):
        corpus = open_corpus(write_fixture(format, tmp_path / format, pairs=2, keys=keys))
        assert [item.key for item in corpus] == keys
    nul = ["a\x00b", "c"]
    assert [item.key for item in open_corpus(write_fixture("manifest", tmp_path / "nul", pairs=2, keys=nul))] == nul


def test_struct_with_path_only_reads_the_file_next_to_the_parquet(tmp_path):
    import pyarrow as pa

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image(5))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"input_image": pa.array([{"bytes": None, "path": "img/a.png"}], image_type),
                      "output_image": pa.array([{"bytes": image(6), "path": "b.png"}], image_type),
                      "edit": ["brighten"]})
    pq.write_table(table, tmp_path / "hq.parquet")
    item = next(iter(open_corpus(str(tmp_path / "hq.parquet"))))
    assert item.original == image(5) and item.edited == image(6)
    assert item.meta["original_path"] == str(tmp_path / "img" / "a.png") and "edited_path" not in item.meta
