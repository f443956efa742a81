"""`sigma-fast annotate` end to end on the CPU with the embedded demo model: every corpus format,
the SIGKILL/resume byte-identity check on a real subprocess, settings refusal, bad input."""
import filecmp
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sigma_fast import cli
from sigma_fast.annotate import Annotator
from sigma_fast.io.corpora import FORMATS, open_corpus
from sigma_fast.pipeline import ShardPlan, ShardRows, annotate_corpus, run_shards, writer_options

from corpus_fixtures import write_fixture
from imdlbenco import imdlbenco_datasets


@pytest.fixture(scope="module")
def annotator():
    return Annotator.from_pretrained(device="cpu", batch_size=2)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("format", FORMATS)
def test_every_format_annotates_end_to_end(format, annotator, tmp_path):
    corpus = open_corpus(write_fixture(format, tmp_path / "in", pairs=3, size=24, corrupt=(1,)))
    assert corpus.format == format
    summary = annotate_corpus(annotator, corpus, tmp_path / "out", shard_size=3, writer="both", progress=False)
    out = tmp_path / "out"
    assert (summary.rows, summary.annotated, summary.failed, summary.shards) == (3, 2, 1, 1)
    rows = read_jsonl(out / "metadata.jsonl")
    assert [row["index"] for row in rows] == [0, 2]
    for row in rows:
        mask, image = Image.open(out / row["mask"]), Image.open(out / row["image"])
        assert mask.mode == "L" and mask.size == image.size == (row["width"], row["height"])
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert [f["index"] for f in read_jsonl(out / "failures.jsonl")] == [1]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["rows"], stats["kept"], stats["failed"]) == (3, 2, 1)
    assert sum(stats["score_histogram"]["counts"]) == 2
    assert sorted(os.listdir(out / "webdataset")) == ["shard-00000.tar"]


def test_filters_keep_pairs_out_of_the_dataset(annotator, tmp_path):
    corpus = open_corpus(write_fixture("manifest", tmp_path / "in", pairs=3, size=24))
    summary = annotate_corpus(annotator, corpus, tmp_path / "out", min_score=1.01, progress=False)
    assert (summary.kept, summary.filtered, summary.dataset_entries) == (0, 3, 0)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["filtered_by"] == {"min_score": 3}
    assert all(row["filtered"] == "min_score" and row["mask"] is None
               for row in read_jsonl(tmp_path / "out" / "metadata.jsonl"))


def test_a_decompression_bomb_is_refused_before_decoding(annotator, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 24 - 1)
    corpus = open_corpus(write_fixture("manifest", tmp_path / "in", pairs=1, size=24))
    summary = annotate_corpus(annotator, corpus, tmp_path / "out", progress=False)
    assert summary.failed == 1
    assert "decompression-bomb" in read_jsonl(tmp_path / "out" / "failures.jsonl")[0]["reason"]


def test_a_short_last_shard_is_redone_when_the_corpus_grows(annotator, tmp_path):
    path = write_fixture("manifest", tmp_path / "in", pairs=5, size=24)
    annotate_corpus(annotator, open_corpus(path, limit=3), tmp_path / "out", shard_size=2, progress=False)
    summary = annotate_corpus(annotator, open_corpus(path), tmp_path / "out", shard_size=2, progress=False)
    assert (summary.skipped_finished, summary.annotated, summary.rows) == (2, 3, 5)
    assert [row["index"] for row in read_jsonl(tmp_path / "out" / "metadata.jsonl")] == [0, 1, 2, 3, 4]


def annotate_args(corpus, out, *extra):
    return ["annotate", "--input", corpus, "--out", str(out), "--batch-size", "2", "--shard-size", "4",
            "--writer", "both", "--manidataset", "--quiet", *extra]


def same_tree(left, right):
    """Every file under `left` and `right` has the same relative path and the same bytes."""
    files = [sorted(os.path.relpath(os.path.join(root, name), top) for root, _, names in os.walk(top) for name in names)
             for top in (left, right)]
    assert files[0] == files[1]
    mismatch = filecmp.cmpfiles(left, right, files[0], shallow=False)[1:]
    assert mismatch == ([], []), mismatch
    return files[0]


def test_sigkill_then_resume_gives_the_bytes_of_a_clean_run(tmp_path):
    corpus = write_fixture("magicbrush", tmp_path / "in", pairs=12, size=24, shards=2, corrupt=(5,))
    out = tmp_path / "out"
    assert cli.main(annotate_args(corpus, out)) == 0  # the clean run, then moved away
    os.rename(out, tmp_path / "clean")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "sigma_fast.cli", *annotate_args(corpus, out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "shards" / "00000" / "done.json").exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (out / "shards" / "00002").exists(), "the run finished before the kill: make the corpus longer"

    assert cli.main(annotate_args(corpus, out)) == 0  # resume: completes only the missing shards
    files = same_tree(str(out), str(tmp_path / "clean"))
    assert {"run.json", "dataset.json", "metadata.jsonl", "failures.jsonl", "stats.json", "shards/00002/done.json",
            "webdataset/shard-00002.tar"} <= set(files)
    assert len([name for name in files if name.startswith("benco/Gt/")]) == 11
    assert len(read_jsonl(out / "failures.jsonl")) == 1

    assert cli.main(["relocate", str(tmp_path / "clean")]) == 0  # the moved clean run points at its new place
    dataset = json.loads((tmp_path / "clean" / "dataset.json").read_text())
    assert len(dataset) == 22 and all(os.path.isfile(image) and image.startswith(str(tmp_path / "clean"))
                                      for image, _ in dataset)


def test_other_settings_are_refused_and_overwrite_starts_over(tmp_path, capsys):
    corpus = write_fixture("manifest", tmp_path / "in", pairs=2, size=24)
    out = tmp_path / "out"
    assert cli.main(annotate_args(corpus, out)) == 0
    before = (out / "metadata.jsonl").read_bytes()
    capsys.readouterr()
    assert cli.main(annotate_args(corpus, out, "--threshold", "0.3")) == 2
    error = capsys.readouterr().err
    ours = [line for line in error.splitlines() if line.startswith("sigma-fast")]  # transformers logs too
    assert len(ours) == 1 and "threshold 0.5 -> 0.3" in ours[0]
    assert (out / "metadata.jsonl").read_bytes() == before
    assert cli.main(annotate_args(corpus, out, "--threshold", "0.3", "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["threshold"] == 0.3


def test_a_missing_input_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    def no_model(args):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(cli, "load_annotator", no_model)
    assert cli.main(["annotate", "--input", str(tmp_path / "nope-*.parquet"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "sigma-fast: error" in error
    assert cli.main(["annotate", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2


def test_imdl_benco_loads_our_dataset(annotator, tmp_path):
    datasets = imdlbenco_datasets()
    corpus = open_corpus(write_fixture("magicbrush", tmp_path / "in", pairs=2, size=24))
    annotate_corpus(annotator, corpus, tmp_path / "out", writer="benco", manidataset=True, progress=False)
    rows = read_jsonl(tmp_path / "out" / "metadata.jsonl")
    for dataset, count in ((datasets.JsonDataset(str(tmp_path / "out" / "dataset.json"), is_resizing=True), 4),
                           (datasets.ManiDataset(str(tmp_path / "out" / "benco"), is_resizing=True), 2)):
        assert len(dataset) == count
        positives = [dataset[i] for i in range(count) if dataset[i]["label"] == 1]
        for row, item in zip(rows, positives):
            ours = np.asarray(Image.open(tmp_path / "out" / row["mask"])) > 127
            np.testing.assert_array_equal(np.asarray(item["mask"])[0] > 0.5, ours)


class Watched:
    """An annotator whose pending results note the thread that waits for them; `fail` is raised
    by the model call instead."""

    def __init__(self, annotator, fail=None):
        self.annotator, self.fail, self.waiters = annotator, fail, set()
        self.batch_size, self.device = annotator.batch_size, annotator.device

    def submit_images(self, *args, **kwargs):
        if self.fail is not None:
            raise self.fail
        pending, waiters = self.annotator.submit_images(*args, **kwargs), self.waiters

        class Pending:
            def result(self):
                waiters.add(threading.current_thread().name)
                return pending.result()

        return Pending()


def run_stages(annotator, corpus, out, shard_size=2):
    plan = ShardPlan(str(out), shard_size, corpus.total())
    return run_shards(annotator, corpus, str(out), plan, itertools.count(), writer_options(("benco",), None, False, 2),
                      workers=2)


def test_results_are_waited_for_on_the_writer_thread(annotator, tmp_path):
    watched = Watched(annotator)
    corpus = open_corpus(write_fixture("manifest", tmp_path / "in", pairs=5, size=24, corrupt=(3,)))
    counts = run_stages(watched, corpus, tmp_path / "out")
    assert watched.waiters == {"sigma-writer"}  # never the model's thread
    assert (counts.annotated, counts.failed, counts.end) == (4, 1, 3)
    assert sorted(os.listdir(tmp_path / "out" / "shards")) == ["00000", "00001", "00002"]


def test_a_failing_stage_stops_the_run_without_hanging(annotator, tmp_path):
    corpus = open_corpus(write_fixture("manifest", tmp_path / "in", pairs=9, size=24))
    with pytest.raises(KeyError, match="boom"):
        run_stages(Watched(annotator, fail=KeyError("boom")), corpus, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / "shards" / "00000")  # nothing committed


def test_shard_rows_reopen_the_corpus_only_after_a_gap(tmp_path):
    corpus = open_corpus(write_fixture("manifest", tmp_path / "in", pairs=7, size=8))
    opened = []
    records = corpus.records
    corpus.records = lambda start=0: opened.append(start) or records(start)
    reader = ShardRows(corpus, 2)
    assert [[row.index for row in reader.rows(shard)] for shard in (0, 1, 3, 4)] == [[0, 1], [2, 3], [6], []]
    assert opened == [0, 6, 8]
    reader.close()


def test_submit_images_copies_only_what_is_asked(annotator):
    from conftest import random_image

    originals = [random_image(20, 24, seed) for seed in range(2)]
    editeds = [random_image(18 + seed, 24, 10 + seed) for seed in range(2)]  # sizes differ: one flat buffer
    instructions = ["add a hat", "remove the dog"]
    full = annotator.annotate_images(originals, editeds, instructions)
    masks_only = annotator.submit_images(originals, editeds, instructions).result()
    half = annotator.submit_images(originals, editeds, instructions, probs="fp16").result()
    for reference, bare, fp16 in zip(full, masks_only, half):
        assert bare.prob is None and reference.prob.dtype == np.float32 and fp16.prob.dtype == np.float16
        np.testing.assert_array_equal(bare.mask, reference.mask)
        assert bare.mask.shape == reference.prob.shape and bare.score == reference.score
        np.testing.assert_allclose(fp16.prob.astype(np.float32), reference.prob, atol=1e-3)
    with pytest.raises(ValueError, match="probs"):
        annotator.submit_images(originals, editeds, instructions, probs="bf16")


@pytest.mark.gpu
def test_results_leave_the_gpu_through_pinned_buffers():
    from conftest import random_image

    gpu = Annotator.from_pretrained(device="cuda", batch_size=2)
    cpu = Annotator.from_pretrained(device="cpu", batch_size=2, dtype="bf16")
    images = [random_image(40, 48, seed) for seed in range(3)]
    pending = gpu.submit_images(images, images[::-1], ["add a hat"] * 3, probs="fp16")
    assert all(chunk.masks.is_pinned() and chunk.probs.is_pinned() and chunk.event is not None
               for chunk in pending.chunks)
    results = pending.result()
    expected = cpu.annotate_images(images, images[::-1], ["add a hat"] * 3)
    for result, reference in zip(results, expected):
        assert result.mask.shape == (40, 48) and result.prob.dtype == np.float16
        assert (result.mask != reference.mask).mean() < 0.01  # bf16 on two devices
