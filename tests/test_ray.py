"""The Ray Data path on a local 2-CPU Ray cluster with the demo model, on a tar corpus (whose row
counts only Ray tasks can tell): `sigma-fast annotate --ray` writes the bytes of the single-process
run and resumes like it; `annotate_dataset` over `read_corpus` gives the single-process masks."""
import json
import os
import shutil

import pytest

ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'sigma_fast[ray]')")

from sigma_fast import cli  # noqa: E402

from corpus_fixtures import write_fixture  # noqa: E402
from test_pipeline import same_tree  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two tar shards with a corrupt pair and a truncated last member, and a junk file: every row kind."""
    return write_fixture("webdataset", tmp_path_factory.mktemp("in"), pairs=7, size=24, shards=2, corrupt=(3,),
                         truncate=True, junk=True)


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """The single-process CLI run's output folder, moved away from where it was written (`out`)."""
    top = tmp_path_factory.mktemp("runs")
    assert cli.main(annotate_args(corpus, top / "out")) == 0
    os.rename(top / "out", top / "single")
    return top / "single"


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def annotate_args(corpus, out, *extra):
    return ["annotate", "--input", corpus, "--out", str(out), "--device", "cpu", "--batch-size", "2",
            "--shard-size", "3", "--writer", "both", "--quiet", *extra]


def test_ray_run_writes_the_bytes_of_the_single_process_run_and_resumes(local_ray, corpus, single):
    out = single.parent / "out"  # where the single run wrote: dataset.json's absolute paths agree
    assert cli.main(annotate_args(corpus, out, "--ray")) == 0
    files = same_tree(str(out), str(single))
    assert {"shards/00002/done.json", "webdataset/shard-00002.tar", "dataset.json"} <= set(files)
    assert [row["index"] for row in read_jsonl(out / "failures.jsonl")] == [3, 6, 7]

    # a shard lost (as after a kill) is redone alone; the merged files come out the same
    shutil.rmtree(out / "shards" / "00001")
    os.remove(out / "metadata.jsonl")
    assert cli.main(annotate_args(corpus, out, "--ray")) == 0
    same_tree(str(out), str(single))


def test_annotate_dataset_over_read_corpus_gives_the_single_process_masks(local_ray, corpus, single):
    from sigma_fast.ray import annotate_dataset, annotator_factory, read_corpus

    expected = {row["index"]: row for row in read_jsonl(single / "metadata.jsonl")}
    ds = annotate_dataset(read_corpus(corpus, rows_per_task=3), annotator_factory(device="cpu", batch_size=2),
                          batch_size=2)
    rows = sorted(ds.take_all(), key=lambda row: row["index"])
    assert [row["index"] for row in rows] == list(range(8))
    for row in rows:
        if row["index"] not in expected:
            assert row["reason"] and row["mask"] is None and row["score"] is None
            continue
        want = expected[row["index"]]
        assert row["reason"] is None and row["key"] == want["key"] and row["instruction"] == want["instruction"]
        assert row["mask"] == (single / want["mask"]).read_bytes()
        assert (row["score"], row["changed_outside"], row["regenerated"]) == (
            want["score"], want["changed_outside"], want["regenerated"])
        assert json.loads(row["edit"]) == want["edit"] and json.loads(row["meta"]) == want["meta"]


class CountedReads:
    """A real file object that adds the bytes read through it to `counter[0]`."""

    def __init__(self, handle, counter):
        self.handle, self.counter = handle, counter

    def read(self, size=-1):
        data = self.handle.read(size)
        self.counter[0] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_counting_a_tar_reads_its_member_headers_not_their_data(tmp_path, monkeypatch):
    from sigma_fast.io.corpora import sources
    from sigma_fast.ray import _count_rows

    path = write_fixture("webdataset", tmp_path, pairs=4, size=96)
    counter, open_binary = [0], sources.open_binary
    monkeypatch.setattr(sources, "open_binary", lambda source: CountedReads(open_binary(source), counter))
    assert _count_rows("webdataset", path) == 4  # what a Ray count task does with a tar
    assert counter[0] < os.path.getsize(path) / 10  # the images are read once: by the shard that annotates them


def test_bad_arguments_are_refused(corpus, tmp_path, capsys):
    from sigma_fast.ray import annotate_corpus_ray, read_corpus

    assert cli.main(annotate_args(corpus, tmp_path / "out", "--ray", "--devices", "cpu,cpu")) == 2
    assert "leave out --devices" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="shard_size"):
        annotate_corpus_ray(None, None, "out", shard_size=0)
    with pytest.raises(ValueError, match="rows_per_task"):
        read_corpus("x", rows_per_task=0)
