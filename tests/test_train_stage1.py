import json
import logging
import os
import sys

import pytest
import torch

from sigma_fast.train import NonFiniteLossError, load_train_config, train
from sigma_fast.train.config import SourceConfig
from sigma_fast.train.data import open_source
from sigma_fast.train.stream import PairStream
from sigma_fast.train.validate import evaluate, merge_metrics, summary
from train_helpers import CONFIGS, tiny_overrides, write_parquet

TINY = str(CONFIGS / "tiny_stage1.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage1_data")
    return (write_parquet(folder / "train.parquet", 48, seed=0),
            write_parquet(folder / "val.parquet", 8, seed=1))


def config_for(tiny_encoders, data, output_dir, **extra):
    train_path, val_path = data
    return load_train_config(TINY, stage=1, overrides=tiny_overrides(tiny_encoders, output_dir, train_path,
                                                                     val_path, **extra))


def test_stage1_loss_falls_validates_and_logs(tiny_encoders, data, tmp_path, caplog, monkeypatch):
    from sigma_fast.model import SigmaModel

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were absent
    caplog.set_level(logging.WARNING)
    run = tmp_path / "run"
    result = train(config_for(tiny_encoders, data, run), progress=False)
    losses = result["losses"]
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, losses
    assert result["val"]["images"] == 8 and result["val"]["f1"] > 0.5
    assert "tensorboard is not installed" in caplog.text
    train_rows = (run / "train.csv").read_text().splitlines()
    assert train_rows[0].startswith("step,lr,loss,bce,dice") and len(train_rows) == 1 + 30 // 5
    assert (run / "val.csv").read_text().splitlines()[1].startswith("30,")
    assert sorted(os.listdir(run / "checkpoints")) == ["LATEST", "step_00000020", "step_00000030"]
    model = SigmaModel.from_pretrained(str(run / "final"))  # a plain checkpoint for the annotator
    assert model.config.image_size == 56


def test_resume_gives_the_identical_next_step(tiny_encoders, data, tmp_path):
    extra = {"optim.steps": 4, "save_every": 2, "data.workers": 2, "data.val": [], "log_every": 1}
    full = train(config_for(tiny_encoders, data, tmp_path / "full", **extra), progress=False)
    checkpoint = tmp_path / "full" / "checkpoints" / "step_00000002"
    resumed = train(config_for(tiny_encoders, data, tmp_path / "resumed", **extra), resume=str(checkpoint),
                    progress=False)
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], abs=1e-6, rel=0)
    final_full = open_head(tmp_path / "full" / "final")
    final_resumed = open_head(tmp_path / "resumed" / "final")
    for name, value in final_full.items():
        torch.testing.assert_close(final_resumed[name], value, atol=1e-6, rtol=0)
    # resuming inside the run folder rewrites the log rows after the checkpoint instead of repeating them
    again = train(config_for(tiny_encoders, data, tmp_path / "full", **extra), resume=str(checkpoint), progress=False)
    assert len(again["losses"]) == 2
    steps = [line.split(",")[0] for line in (tmp_path / "full" / "train.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def open_head(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def test_resume_refuses_a_different_batch_size(tiny_encoders, data, tmp_path):
    extra = {"optim.steps": 1, "save_every": 1, "data.val": []}
    train(config_for(tiny_encoders, data, tmp_path / "a", **extra), progress=False)
    with pytest.raises(ValueError, match="batch_size=8, this config has 4"):
        train(config_for(tiny_encoders, data, tmp_path / "b", **{**extra, "optim.batch_size": 4}),
              resume=str(tmp_path / "a"), progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_encoders, data, tmp_path, monkeypatch):
    from sigma_fast.train import losses

    real, calls = losses.bce_dice, []

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), parts) if len(calls) == 3 else (loss, parts)

    monkeypatch.setattr(losses, "bce_dice", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as error:
        train(config_for(tiny_encoders, data, run, **{"optim.steps": 4, "save_every": 2, "data.val": []}),
              progress=False)
    message = str(error.value)
    assert "step 3: the loss is nan" in message and "not applied" in message
    assert "step_00000002" in message
    assert sorted(os.listdir(run / "checkpoints")) == ["LATEST", "step_00000002"]
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_00000002"


def test_planted_perfect_prediction_scores_f1_one(data):
    config = SourceConfig(format="parquet", path=str(data[1]))
    config.validate("val")
    sources = [open_source(config, True)]

    def planted(batch):  # logits that reproduce the ground truth exactly
        return batch["mask"][:, None] * 20 - 10

    parts = [evaluate(planted, PairStream(sources, 56, 4, rank, 2, 0, 3, True, None, 0, True)) for rank in (0, 1)]
    result = summary(merge_metrics(parts))
    assert result["images"] == 8
    assert result["f1"] == pytest.approx(1.0, abs=1e-6) and result["iou"] == pytest.approx(1.0, abs=1e-6)
    assert result["pooled_f1"] == pytest.approx(1.0, abs=1e-6)
    wrong = summary(evaluate(lambda batch: -planted(batch), PairStream(sources, 56, 4, 0, 1, 0, 3, True, None, 0, True)))
    assert wrong["f1"] == pytest.approx(0.0, abs=1e-6)


def test_cli_trains_and_skips_corrupt_samples(tiny_encoders, tmp_path, capsys):
    from sigma_fast.cli import main

    corrupt = write_parquet(tmp_path / "corrupt.parquet", 16, corrupt={1, 6, 9})
    backbone, text_encoder = tiny_encoders
    code = main(["train", "--stage", "1", "--config", TINY, "--quiet",
                 "--set", f"output_dir={tmp_path / 'run'}", "--set", f"model.backbone={backbone}",
                 "--set", f"model.text_encoder={text_encoder}",
                 "--set", f"data.train=[{{format: parquet, path: {corrupt}}}]", "--set", "data.val=[]",
                 "--set", "optim.steps=4", "--set", "data.negative_fraction=0", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 4 and result["skipped"] == 6  # 32 samples seen: each corrupt row twice
    assert main(["train", "--stage", "2", "--config", TINY]) == 2
    assert "Stage II starts from a Stage I checkpoint" in capsys.readouterr().err
