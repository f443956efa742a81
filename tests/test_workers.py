"""Several devices on one node (`sigma_fast.workers`), exercised on the CPU with two CPU worker
processes: the output must be byte-identical to a single-process run."""
import filecmp
import os
import pickle

import pytest
import torch

from sigma_fast.annotate import Annotator
from sigma_fast.io.corpora import open_corpus
from sigma_fast.pipeline import annotate_corpus
from sigma_fast.workers import AnnotatorRecipe, parse_devices

from corpus_fixtures import write_fixture
from test_grounding_models import model_folders  # noqa: F401 (the tiny grounding models fixture)


@pytest.fixture(scope="module")
def annotator():
    return Annotator.from_pretrained(device="cpu", batch_size=2)


def tree(top):
    return sorted(os.path.relpath(os.path.join(root, name), top) for root, _, names in os.walk(top) for name in names)


def test_parse_devices():
    assert parse_devices("cpu,cpu") == [torch.device("cpu")] * 2
    assert parse_devices(["cpu"]) == [torch.device("cpu")]
    with pytest.raises(ValueError, match="unknown device"):
        parse_devices("tpu0")
    with pytest.raises(ValueError, match="empty"):
        parse_devices([])
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        assert parse_devices("all") == [torch.device("cuda", index) for index in range(count)]
        assert parse_devices("0") == [torch.device("cuda", 0)]
    else:
        with pytest.raises(ValueError, match="no GPU"):
            parse_devices("all")
        with pytest.raises(ValueError, match="not there"):
            parse_devices("0,1")


def test_two_cpu_workers_resume_and_write_the_bytes_of_one_process(annotator, tmp_path):
    path = write_fixture("magicbrush", tmp_path / "in", pairs=9, size=24, shards=2, corrupt=(6,))
    options = {"shard_size": 2, "writer": "both", "manidataset": True, "progress": False}
    out = tmp_path / "out"
    single = annotate_corpus(annotator, open_corpus(path), out, **options)
    os.rename(out, tmp_path / "single")  # dataset.json holds absolute paths: both runs write into `out`
    annotate_corpus(annotator, open_corpus(path, limit=4), out, **options)  # shards 0 and 1, as a killed run leaves
    several = annotate_corpus(annotator, open_corpus(path), out, devices="cpu,cpu", **options)
    counts = (several.rows, several.skipped_finished, several.annotated, several.failed, several.shards)
    assert counts == (9, 4, 4, 1, 5)
    assert (several.kept, several.dataset_entries) == (single.kept, single.dataset_entries)
    files = tree(out)
    assert files == tree(tmp_path / "single") and "shards/00004/done.json" in files
    assert filecmp.cmpfiles(out, tmp_path / "single", files, shallow=False)[1:] == ([], [])


def test_grounded_annotators_are_refused_before_out_is_touched(annotator, tmp_path):
    grounded = Annotator(annotator.model, device="cpu", batch_size=2, prior="grounded", grounder=object())
    corpus = open_corpus(write_fixture("manifest", tmp_path / "in", pairs=1, size=24))
    with pytest.raises(ValueError, match="grounded"):
        annotate_corpus(grounded, corpus, tmp_path / "out", devices="cpu,cpu", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="grounded"):
        AnnotatorRecipe(grounded)


def test_workers_look_for_the_grounding_models_the_command_names(model_folders, tmp_path):  # noqa: F811
    from sigma_fast.cli import build_parser, load_annotator

    detector, segmenter = model_folders
    args = build_parser().parse_args(["annotate", "--manifest", "m.jsonl", "--out", "o", "--prior", "auto",
                                      "--detector", detector, "--segmenter", segmenter, "--grounding-cache",
                                      str(tmp_path / "cache"), "--device", "cpu", "--devices", "cpu,cpu"])
    parent = load_annotator(args)
    assert parent.grounding
    recipe = pickle.loads(pickle.dumps(AnnotatorRecipe(parent)))  # what a spawned worker receives
    worker = recipe(torch.device("cpu"))
    assert worker.grounding and worker.grounder.settings == parent.grounder.settings
    assert worker.grounding_options == {"detector": detector, "segmenter": segmenter,
                                        "cache_dir": str(tmp_path / "cache")}
