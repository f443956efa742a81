import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sigma_fast.cli import main

from conftest import random_image


def save(array, path, **params):
    Image.fromarray(array).save(path, **params)
    return os.path.basename(path)


@pytest.fixture
def corpus(tmp_path):
    """A manifest with good pairs (PNG, JPEG, EXIF-rotated, different sizes) and planted bad ones."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = []
    for index, (h, w) in enumerate([(40, 60), (37, 23), (64, 64)]):
        original = save(random_image(h, w, index).numpy(), folder / f"o{index}.png")
        edited = save(random_image(h, w, 100 + index).numpy(), folder / f"e{index}.jpg", quality=90)
        rows.append({"original": original, "edited": edited, "instruction": f"add a ball number {index}"})
    exif = Image.Exif()
    exif[0x0112] = 6
    save(random_image(30, 50, 7).numpy(), folder / "rot.jpg", exif=exif.tobytes())
    rows.append({"original": "o0.png", "edited": "rot.jpg", "instruction": "remove the cat", "key": "rotated/1"})
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows.append({"original": "o1.png", "edited": "corrupt.png", "instruction": "make it red"})
    rows.append({"original": "missing.png", "edited": "e1.jpg", "instruction": "add a hat"})
    rows.append({"original": str(folder / "o2.png"), "edited": "e2.jpg", "instruction": "", "key": "abs"})
    lines = [json.dumps(row) for row in rows]
    lines.insert(2, "{not json")
    lines.append(json.dumps({"original": "o0.png", "instruction": "no edited field"}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def run_cli(*args):
    return main(list(args))


def test_annotate_writes_an_imdl_benco_dataset(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run_cli("annotate", "--manifest", str(corpus / "pairs.jsonl"), "--checkpoint", tiny_checkpoint,
                   "--out", str(out), "--batch-size", "2", "--quiet") == 0
    dataset = json.loads((out / "dataset.json").read_text())
    metadata = read_jsonl(out / "metadata.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert len(metadata) == 4
    assert len(dataset) == 8
    positives = [entry for entry in dataset if entry[1] != "Negative"]
    negatives = [entry for entry in dataset if entry[1] == "Negative"]
    assert len(positives) == len(negatives) == 4
    for image_path, mask_path in positives:
        assert os.path.isfile(image_path) and os.path.isfile(mask_path)
        image, mask = Image.open(image_path), Image.open(mask_path)
        assert mask.mode == "L" and mask.size == image.size  # IMDL-BenCo asserts this, reading without EXIF
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    for image_path, _ in negatives:
        assert os.path.isfile(image_path)

    rotated = next(row for row in metadata if row["key"] == "rotated/1")
    assert rotated["name"].startswith("rotated_1-")
    assert (rotated["height"], rotated["width"]) == (50, 30)
    assert rotated["image_copy"] == {"edited": "rgb_png", "original": "bytes"}
    assert rotated["edit"]["action"] == "remove"
    assert all({"index", "instruction", "edit", "score", "regenerated", "meta"} <= set(r) for r in metadata)
    assert [row["index"] for row in metadata] == sorted(row["index"] for row in metadata)

    assert len(failures) == 5 and [f["index"] for f in failures] == sorted(f["index"] for f in failures)
    reasons = [failure["reason"] for failure in failures]
    assert any("not a readable image" in r or "corrupt" in r for r in reasons)
    assert any("missing.png" in r for r in reasons)
    assert any("invalid JSON" in r for r in reasons)
    assert any("missing field" in r for r in reasons)
    assert any("empty instruction" in r for r in reasons)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["rows"], stats["kept"], stats["failed"]) == (9, 4, 5)


def test_rerun_resumes_without_redoing_work(corpus, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("annotate", "--manifest", str(corpus / "pairs.jsonl"), "--checkpoint", tiny_checkpoint,
            "--out", str(out), "--quiet", "--shard-size", "2")
    run_cli(*args, "--limit", "2")
    assert len(read_jsonl(out / "metadata.jsonl")) == 2
    capsys.readouterr()
    run_cli(*args, "--json")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped_finished"] == 2 and summary["annotated"] == 2 and summary["rows"] == 9
    keys = [row["key"] for row in read_jsonl(out / "metadata.jsonl")]
    assert len(keys) == len(set(keys)) == 4


def test_a_leftover_partial_shard_is_discarded(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ("annotate", "--manifest", str(corpus / "pairs.jsonl"), "--checkpoint", tiny_checkpoint,
            "--out", str(out), "--quiet", "--shard-size", "4")
    run_cli(*args, "--limit", "4")
    partial = out / "shards" / ".00001.partial"
    partial.mkdir()
    (partial / "metadata.jsonl").write_text('{"key": "torn", "ima')  # a kill mid-write
    run_cli(*args)
    assert not partial.exists()
    assert len(read_jsonl(out / "metadata.jsonl")) == 4


def test_missing_manifest_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    assert run_cli("annotate", "--manifest", str(tmp_path / "nope.jsonl"), "--checkpoint", tiny_checkpoint,
                   "--out", str(tmp_path / "o")) == 2
    assert "matches no file" in capsys.readouterr().err


def test_console_script_runs_with_a_csv_manifest(corpus, tiny_checkpoint, tmp_path):
    (corpus / "pairs.csv").write_text("original,edited,instruction\no0.png,e0.jpg,\"add a hat, then a scarf\"\n")
    out = tmp_path / "csv_out"
    completed = subprocess.run([sys.executable, "-m", "sigma_fast.cli", "annotate", "--manifest",
                                str(corpus / "pairs.csv"), "--checkpoint", tiny_checkpoint, "--out", str(out)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "annotate" in completed.stderr  # the progress bar
    assert len(json.loads((out / "dataset.json").read_text())) == 2


def test_eval_scores_against_ground_truth_masks(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "bench"
    folder.mkdir()
    rows = []
    for index in range(3):
        original = random_image(32, 48, index).numpy()
        edited = original.copy()
        edited[8:20, 10:30] = 255 - edited[8:20, 10:30]  # a local edit
        gt = np.zeros((32, 48), np.uint8)
        gt[8:20, 10:30] = 255
        save(original, folder / f"o{index}.png")
        save(edited, folder / f"e{index}.png")
        save(gt, folder / f"m{index}.png")
        rows.append({"original": f"o{index}.png", "edited": f"e{index}.png", "mask": f"m{index}.png",
                     "instruction": "remove the box"})
    rows.append({"original": "o0.png", "edited": "e0.png", "instruction": "no mask here"})
    (folder / "bench.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "eval"
    assert run_cli("eval", "--manifest", str(folder / "bench.jsonl"), "--checkpoint", tiny_checkpoint,
                   "--out", str(out), "--quiet") == 0
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["all"]["images"] == 3 and summary["local"]["images"] == 3
    assert summary["regenerated"]["images"] == 0
    for key in ("f1", "iou", "auc"):
        assert 0.0 <= summary["all"]["mean"][key] <= 1.0
    assert [f["reason"] for f in summary["failures"]] == ["no ground-truth mask in this row"]
    assert len(read_jsonl(out / "eval_pairs.jsonl")) == 3
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "evaluated 3 image(s), mean over images (skip_empty)"
    assert printed[1].split()[:2] == ["sigma:", "F1"] and printed[2].split() == ["skipped:", "1"]
    assert run_cli("eval", "--manifest", str(folder / "bench.jsonl"), "--checkpoint", tiny_checkpoint, "--quiet",
                   "--json") == 0
    assert json.loads(capsys.readouterr().out)["sigma"]["mean"] == summary["all"]["mean"]


def test_summaries_are_text_or_one_json_object(tmp_path, capsys):
    assert run_cli("demo", "--out", str(tmp_path / "demo"), "--quiet") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("demo annotated") and any(line.split() == ["report:", str(tmp_path / "demo" / "report.html")]
                                                         for line in lines)
    assert run_cli("demo", "--out", str(tmp_path / "demo"), "--quiet", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["already_done"] > 0 and summary["report"] == str(tmp_path / "demo" / "report.html")


def test_model_loading_prints_no_third_party_bars(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "sigma_fast.cli", "demo", "--out", str(tmp_path / "demo")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "Loading weights" not in completed.stderr and "WARNING" not in completed.stderr
