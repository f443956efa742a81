"""`sigma-fast eval`: conditions, the dev split, the gallery, the tables, and the whole command on the
shipped sample pairs and a MagicBrush fixture, with its report opened in headless Chromium."""
import json
import os

import numpy as np
import pytest
import torch
from corpus_fixtures import write_fixture
from test_demo import images_loaded_in_chromium, screenshot_is_not_blank

from sigma_fast.baselines import pixel_baseline
from sigma_fast.cli import main
from sigma_fast.demo import DEMO_PAIRS
from sigma_fast.evaluate import QUALITIES, Condition, Gallery, conditions, degrade, dev_keys, evaluate
from sigma_fast.io.corpora import open_corpus


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_conditions_and_degrade():
    assert [c.name for c in conditions()] == ["clean"]
    sweep = conditions(jpeg_sweep=True)
    assert [c.quality for c in sweep[1:]] == list(QUALITIES)
    assert len(conditions(resize_sweep=True)) == 1 + 3 * len(QUALITIES)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    assert degrade(image, Condition("clean")) is image
    low = degrade(image, Condition("jpeg50", 1.0, 50))
    assert low.shape == image.shape and low.dtype == torch.uint8 and not torch.equal(low, image)
    high_error = (degrade(image, Condition("jpeg100", 1.0, 100)).float() - image.float()).abs().mean()
    assert high_error < (low.float() - image.float()).abs().mean()
    assert degrade(image, Condition("resize0.5_jpeg90", 0.5, 90)).shape == (20, 30, 3)


def test_dev_keys_are_a_stable_share_of_the_masked_rows():
    corpus = open_corpus(os.path.join(DEMO_PAIRS, "pairs.jsonl"))
    keys = dev_keys(corpus, 0.2)
    assert len(keys) == 2 and keys == dev_keys(corpus, 0.2)
    assert keys < dev_keys(corpus, 0.5)  # a larger share keeps the smaller one's keys
    with pytest.raises(ValueError):
        dev_keys(corpus, 1.5)


def test_gallery_keeps_the_best_and_worst():
    gallery = Gallery(2)
    built = []
    for index, f1 in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.95]):
        gallery.offer(f1, index, lambda index=index: built.append(index) or index)
    best, worst = gallery.items()
    assert best == [5, 1] and worst == [2, 4]
    assert 0 in built and len(built) < 6 * 2  # items are built once, and only when they enter


def test_tables_by_benchmark_action_and_group(tmp_path):
    corpus = open_corpus(os.path.join(DEMO_PAIRS, "pairs.jsonl"))
    summary = evaluate({"pixel": pixel_baseline()}, corpus, str(tmp_path), jpeg_sweep=False, gallery=2, progress=False)
    tables = summary["tables"]["pixel"]
    actions = {json.loads(line)["action"] for line in open(os.path.join(DEMO_PAIRS, "pairs.jsonl"))}
    assert set(tables["action"]) == actions and set(tables["benchmark"]) == {"manifest"}
    assert sum(t["images"] for t in tables["group"].values()) == tables["all"]["images"] == summary["all"]["images"]
    assert sum(t["images"] for t in tables["action"].values()) == tables["all"]["images"]
    assert summary["calibration"] is None and summary["robustness"]["pixel"].keys() == {"clean"}
    assert summary["averaging"] == "skip_empty" and "Otsu" in summary["notes"]["pixel"]
    rows = read_jsonl(tmp_path / "eval_pairs.jsonl")
    assert {row["condition"] for row in rows} == {"clean"} and len(rows) == 8


def test_eval_decodes_with_annotates_pair_decoder(tmp_path, monkeypatch):
    from sigma_fast.io.decode import PairDecoder, choose_backend

    decoders, real = [], PairDecoder.decode

    def decode(self, records):  # the real decoder, recording what it was given
        decoders.append((self.device, self.backend, [record.key for record in records]))
        return real(self, records)

    monkeypatch.setattr(PairDecoder, "decode", decode)
    corpus = open_corpus(os.path.join(DEMO_PAIRS, "pairs.jsonl"))
    summary = evaluate({"pixel": pixel_baseline()}, corpus, batch_size=3, gallery=0, progress=False)
    assert [len(keys) for *_, keys in decoders] == [3, 3, 2]  # one call per batch of pairs
    # annotate's choice for the CPU (PIL, or DALI's CPU pipeline where it is installed)
    assert {(device, backend) for device, backend, _ in decoders} == {(torch.device("cpu"),
                                                                       choose_backend(torch.device("cpu"))[0])}
    assert summary["all"]["images"] == 8 and not summary["failures"]


def test_eval_sigma_pixel_feature_jpeg_sweep_end_to_end(tmp_path, capsys):
    """The done-when check: the demo model on the shipped pairs and on a MagicBrush fixture."""
    benchmark = write_fixture("magicbrush", tmp_path / "magicbrush", pairs=4, size=32)
    inputs = (["--manifest", os.path.join(DEMO_PAIRS, "pairs.jsonl")], ["--input", benchmark, "--format", "magicbrush"])
    for name, source in zip(("demo", "magicbrush"), inputs):
        out = tmp_path / f"eval_{name}"
        assert main(["eval", *source, "--methods", "sigma,pixel,feature", "--jpeg-sweep", "--out", str(out),
                     "--gallery", "2", "--batch-size", "4", "--quiet"]) == 0
        assert str(out / "report.html") in capsys.readouterr().out
        summary = json.loads((out / "eval_summary.json").read_text())
        assert summary["methods"] == ["sigma", "pixel", "feature"] and not summary["failures"]
        calibration = summary["calibration"]
        assert calibration["dev_pairs"] >= 1 and 0 <= calibration["threshold"] < 1
        assert f"{calibration['threshold']:g}" in summary["notes"]["feature"]
        pairs = summary["all"]["images"]
        assert pairs >= 1
        for method in summary["methods"]:
            assert set(summary["robustness"][method]) == {"clean", *(f"jpeg{q}" for q in QUALITIES)}
            for entry in summary["robustness"][method].values():
                assert entry["images"] == pairs and 0 <= entry["mean"]["f1"] <= 1
        assert summary["robustness"]["sigma"]["clean"]["mean"] == summary["tables"]["sigma"]["all"]["mean"]
        assert len(read_jsonl(out / "eval_pairs.jsonl")) == pairs * 3 * (1 + len(QUALITIES))
        assert os.path.isfile(out / "report_files" / "robustness.png")
        assert os.path.isfile(out / "report_files" / "robustness.svg")
    loaded, total = images_loaded_in_chromium(str(out / "report.html"))
    assert total >= 1 + 2 * 6 and loaded == total  # the plot and two gallery rows of six panels at least
    assert screenshot_is_not_blank(str(out / "report.html"))


def test_single_image_benchmark_rows_are_skipped_with_their_reason(tmp_path, capsys):
    from corpus_fixtures import write_benchmark

    out = tmp_path / "eval"
    assert main(["eval", "--input", write_benchmark("sid_set", tmp_path / "sid"), "--format", "sid_set",
                 "--methods", "pixel", "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["failures"] and {failure["reason"] for failure in summary["failures"]} == {
        "single-image benchmark row: every method here compares an original with its edit"}
    assert json.loads(capsys.readouterr().out)["skipped"] == len(summary["failures"])
