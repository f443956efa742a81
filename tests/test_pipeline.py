"""`sigma-fast annotate` end to end on the CPU with the embedded demo model: every corpus format,
the SIGKILL/resume byte-identity check on a real subprocess, settings refusal, bad input."""
import filecmp
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_fast import cli
from sigma_fast.annotate import Annotator
from sigma_fast.io.corpora import FORMATS, open_corpus
from sigma_fast.pipeline import annotate_corpus

from corpus_fixtures import write_fixture


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


def imdlbenco_datasets():
    """IMDL-BenCo's dataset classes, loaded from its files (its package import pulls timm and
    torchvision; here only its registry, transforms and cv2 are stood in for). Skips when absent:
    install IMDLBenCo or point SIGMA_FAST_IMDLBENCO at a checkout's `IMDLBenCo` folder."""
    folder = os.environ.get("SIGMA_FAST_IMDLBENCO")
    if folder is None:
        spec = importlib.util.find_spec("IMDLBenCo")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("IMDL-BenCo is not installed (set SIGMA_FAST_IMDLBENCO to its source folder)")
        folder = spec.submodule_search_locations[0]
    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    stand_ins = {"IMDLBenCo": types.ModuleType("IMDLBenCo"), "IMDLBenCo.datasets": types.ModuleType("IMDLBenCo.datasets"),
                 "IMDLBenCo.registry": types.SimpleNamespace(DATASETS=registry),
                 "IMDLBenCo.transforms": types.SimpleNamespace(
                     get_albu_transforms=lambda **_: lambda image, masks: {  # albumentations' ToTensorV2 at the end
                         "image": torch.from_numpy(image), "masks": [torch.from_numpy(mask) for mask in masks]},
                     EdgeMaskGenerator=None)}
    stand_ins["IMDLBenCo.datasets"].__path__ = [os.path.join(folder, "datasets")]
    if importlib.util.find_spec("cv2") is None:
        stand_ins["cv2"] = types.ModuleType("cv2")
    saved = {name: sys.modules.get(name) for name in [*stand_ins, "IMDLBenCo.datasets.utils",
                                                       "IMDLBenCo.datasets.abstract_dataset"]}
    sys.modules.update(stand_ins)
    try:
        modules = {}
        for name in ("utils", "abstract_dataset", "iml_datasets"):
            spec = importlib.util.spec_from_file_location(f"IMDLBenCo.datasets.{name}",
                                                          os.path.join(folder, "datasets", f"{name}.py"))
            modules[name] = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = modules[name]
            spec.loader.exec_module(modules[name])
        return modules["iml_datasets"]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


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
