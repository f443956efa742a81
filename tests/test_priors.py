"""The prior store, `sigma-fast prior`, and training on cached priors (tiny models, CPU)."""
import json
import logging
import os

import pytest
import torch

from corpus_fixtures import write_fixture
from sigma_fast.grounding import GroundingResult
from sigma_fast.io.corpora import open_corpus
from sigma_fast.priors import PriorStore, compute_priors
from sigma_fast.train import load_train_config, train
from sigma_fast.train.config import SourceConfig
from sigma_fast.train.data import open_source
from sigma_fast.train.stream import TRAIN_STREAM, PairStream
from test_grounding_models import model_folders  # noqa: F401 (the tiny grounding models fixture)
from test_grounding_parser import spy_generate, tiny_lm_folder  # noqa: F401 (the tiny LM fixture)
from train_helpers import CONFIGS, tiny_overrides, write_parquet

SETTINGS = {"producer": "test"}


def test_store_round_trip_flat_and_missing_keys(tmp_path, caplog):
    store = PriorStore.create(str(tmp_path / "p"), 4, SETTINGS)
    prior = torch.linspace(0, 1, 16).view(4, 4)
    store.put("a/../b:1", prior, False)  # an unsafe key gets a safe file name
    store.put("flat one", torch.zeros(4, 4), True)
    assert len(os.listdir(tmp_path / "p" / "maps")) == 2  # one file per entry, no leftovers
    again = PriorStore(str(tmp_path / "p"))  # reopened from disk
    read, flat = again.get("a/../b:1")
    assert not flat and read.dtype == torch.float32 and torch.allclose(read, prior, atol=0.5 / 255)
    assert again.get("flat one")[1] and torch.equal(again.get("flat one")[0], torch.ones(4, 4))
    caplog.set_level(logging.WARNING)
    assert again.get("never")[1] and again.get("never either")[1]
    assert again.missing == 2 and caplog.text.count("no prior for") == 1
    assert again.has("a/../b:1") and again.has("flat one") and not again.has("never")
    assert len(again.names()) == 2
    with pytest.raises(ValueError, match="use another folder"):
        PriorStore.create(str(tmp_path / "p"), 8, SETTINGS)
    with pytest.raises(ValueError, match="shape"):
        store.put("wrong", torch.ones(3, 3), False)
    with pytest.raises(FileNotFoundError, match="not a prior store"):
        PriorStore(str(tmp_path))


class CountingProducer:
    """A stand-in producer (as a simulated grounder is): random priors, flat for global edits;
    counts the pairs it grounds."""

    def __init__(self):
        self.pairs = 0

    def priors(self, originals, editeds, edits, grid):
        self.pairs += len(originals)
        prior = torch.rand(len(originals), grid, grid, generator=torch.Generator().manual_seed(self.pairs))
        flat = torch.tensor([edit.action == "global" for edit in edits])
        return GroundingResult(prior=prior, flat=flat, boxes=[[] for _ in originals])


def test_compute_priors_resumes_and_counts(tmp_path):
    corpus_path = write_fixture("manifest", tmp_path / "corpus", pairs=5, missing=(3,))
    producer = CountingProducer()
    first = compute_priors(open_corpus(corpus_path, limit=3), str(tmp_path / "p"), producer, 4, batch_size=2,
                           settings=SETTINGS, progress=False)
    assert first == {"grounded": 0, "flat": 3, "skipped": 0, "failed": 0, "total": 3}  # global instructions
    again = compute_priors(open_corpus(corpus_path), str(tmp_path / "p"), producer, 4, batch_size=2,
                           settings=SETTINGS, progress=False)
    assert again == {"grounded": 0, "flat": 1, "skipped": 3, "failed": 1, "total": 5}
    assert producer.pairs == 4  # the three stored pairs were not grounded again


def test_compute_priors_parses_each_batch_in_one_llm_call(tiny_lm_folder, tmp_path):  # noqa: F811
    from sigma_fast.grounding import LLMParser

    corpus_path = write_fixture("manifest", tmp_path / "corpus", pairs=5)
    parser = LLMParser.from_pretrained(str(tiny_lm_folder), device="cpu")
    calls = spy_generate(parser, ['{"action": "global", "source": null, "target": null}'] * 5)
    counts = compute_priors(open_corpus(corpus_path), str(tmp_path / "p"), CountingProducer(), 4, batch_size=2,
                            parser=parser, settings=SETTINGS, progress=False)
    assert counts["flat"] == 5 and parser.fallbacks == 0  # every reply was read as the global edit
    assert [call["input_ids"].shape[0] for call in calls] == [2, 2, 1]  # one model call per batch of pairs


def test_prior_command_grounds_a_fixture_corpus(model_folders, tmp_path, monkeypatch, capsys):  # noqa: F811
    from sigma_fast import cli
    from sigma_fast.grounding import Grounder

    corpus_path = write_fixture("manifest", tmp_path / "corpus", pairs=3, size=32)
    rows = [json.loads(line) for line in open(corpus_path)]
    rows[0]["instruction"], rows[2]["instruction"] = "remove the dog", "add a red hat"
    with open(corpus_path, "w") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
    # random tiny models: keep every box, so that the local edits ground to a non-flat prior
    real = Grounder.from_pretrained.__func__
    monkeypatch.setattr(Grounder, "from_pretrained", classmethod(
        lambda cls, *args, **kwargs: real(cls, *args, **{**kwargs, "box_threshold": 0.0, "text_threshold": 0.0})))
    detector, segmenter = model_folders
    argv = ["--json", "prior", "--input", corpus_path, "--out", str(tmp_path / "p"), "--grid", "4",
            "--detector", detector, "--segmenter", segmenter, "--device", "cpu", "--batch-size", "2", "--quiet"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["grounded"], summary["flat"], summary["skipped"]) == (2, 1, 0)
    store = PriorStore(str(tmp_path / "p"))
    assert store.grid == 4 and store.settings["detector"] == detector and store.settings["box_threshold"] == 0.0
    assert not store.get(rows[0]["key"])[1] and store.get(rows[1]["key"])[1]
    assert cli.main(argv) == 0  # a re-run skips every pair
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 3


def test_a_manifest_key_with_any_characters_trains_with_its_stored_prior(tmp_path):
    keys = ["a/b c:1", "plain", "x?*y"]
    corpus_path = write_fixture("manifest", tmp_path / "corpus", pairs=3, keys=keys)
    rows = [json.loads(line) for line in open(corpus_path)]
    with open(corpus_path, "w") as handle:  # a local edit: its prior is not flat
        handle.write("".join(json.dumps({**row, "instruction": "remove the dog"}) + "\n" for row in rows))
    counts = compute_priors(open_corpus(corpus_path), str(tmp_path / "p"), CountingProducer(), 4,
                            settings=SETTINGS, progress=False)
    assert counts["grounded"] == 3
    store = PriorStore(str(tmp_path / "p"))
    source = open_source(SourceConfig(format="manifest", path=corpus_path), need_mask=False)
    assert [source.row(0, index).key for index in range(3)] == keys
    stream = PairStream([source], 28, 3, 0, 1, 0, TRAIN_STREAM, False, priors=store, finite=True)  # in file order
    for position, key in enumerate(keys):
        sample, failure = stream.sample(position)
        assert failure is None and not sample["prior_flat"]
        assert torch.equal(sample["prior"], store.get(key)[0])
    assert store.missing == 0


def stored_priors(folder, keys, grid):
    """A store holding a distinct, non-flat prior for each key -> (store, {key: prior})."""
    store = PriorStore.create(str(folder), grid, SETTINGS)
    generator = torch.Generator().manual_seed(0)
    priors = {}
    for key in keys:
        store.put(key, torch.rand(grid, grid, generator=generator) * 0.9 + 0.05, False)
        priors[key] = store.get(key)[0]
    return store, priors


def test_prior_dropout_share_is_deterministic(tmp_path, monkeypatch):
    from sigma_fast.train import stream as stream_module

    train_path = write_parquet(tmp_path / "train.parquet", 16)
    blank = {"original": torch.zeros(56, 56, 3, dtype=torch.uint8), "mask": torch.zeros(56, 56), "kind": "positive"}
    # decoding has nothing to do with the draw: left out, to keep the test fast
    monkeypatch.setattr(stream_module, "decode_sample", lambda *args: {**blank, "edited": blank["original"]})
    store, _ = stored_priors(tmp_path / "p", [f"train/{i:08d}" for i in range(16)], 4)
    source = open_source(SourceConfig(format="parquet", path=str(train_path)), need_mask=True)

    def flags(dropout, seed=0):
        stream = PairStream([source], 56, 16, 0, 1, seed, TRAIN_STREAM, True, priors=store, prior_dropout=dropout)
        batches = [stream.make_batch(index) for index in range(8)]
        return [flag for batch in batches for flag in batch["prior_flat"]]

    assert not any(flags(0.0)) and all(flags(1.0))
    dropped = flags(0.3)
    assert dropped == flags(0.3) and dropped != flags(0.3, seed=1)
    assert 0.2 < sum(dropped) / len(dropped) < 0.4


def test_stage1_trains_on_cached_priors(tiny_encoders, tmp_path, monkeypatch):
    from sigma_fast.model import SigmaModel

    train_path = write_parquet(tmp_path / "train.parquet", 16)
    _, priors = stored_priors(tmp_path / "p", [f"train/{i:08d}" for i in range(16)], 4)
    seen, forward = [], SigmaModel.forward

    def spy(self, x_orig, x_edit, text_tokens, text_mask, prior=None):
        if torch.is_grad_enabled():  # the training forward, not validation
            seen.append(prior.detach().clone())
        return forward(self, x_orig, x_edit, text_tokens, text_mask, prior)

    monkeypatch.setattr(SigmaModel, "forward", spy)

    def run(name, **extra):
        values = tiny_overrides(tiny_encoders, tmp_path / name, train_path, **{
            "optim.steps": 2, "save_every": 2, "data.val": [{"format": "parquet", "path": str(train_path)}],
            "data.val_batches": 1, "val_every": 2, **extra})
        return train(load_train_config(str(CONFIGS / "tiny_stage1.yaml"), stage=1, overrides=values), progress=False)

    cached = run("cached", **{"data.priors": str(tmp_path / "p")})
    stored = torch.stack(list(priors.values()))
    assert len(seen) == 2 and all(batch.shape == (8, 4, 4) for batch in seen)
    for prior in torch.cat(seen):  # every training pair got its own stored prior
        assert (prior - stored).abs().amax((1, 2)).min() < 1e-6
    seen.clear()
    flat = run("flat")
    assert all(torch.equal(batch, torch.ones(8, 4, 4)) for batch in seen)
    assert cached["losses"][0] != flat["losses"][0] and cached["val"] != flat["val"]
    with pytest.raises(ValueError, match="grid"):
        PriorStore.create(str(tmp_path / "p8"), 8, SETTINGS)
        run("mismatch", **{"data.priors": str(tmp_path / "p8")})


@pytest.mark.parametrize("format", ["magicbrush", "ultraedit"])
def test_training_rows_have_the_corpus_keys(tmp_path, format):
    path = write_fixture(format, tmp_path, pairs=5, shards=2)
    expected = [record.key for record in open_corpus(path)]
    columns = {"magicbrush": {}, "ultraedit": {"original": "source_image", "edited": "edited_image",
                                               "instruction": "edit_prompt", "mask": "mask_image"}}[format]
    config = SourceConfig(format="parquet", path=str(path), columns=columns)
    config.validate("source")  # fills in the other roles' default columns
    source = open_source(config, need_mask=False)
    keys = [source.row(block, index).key for block, rows in enumerate(source.block_sizes()) for index in range(rows)]
    assert keys == expected
