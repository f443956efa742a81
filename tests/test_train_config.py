import pytest
import yaml

from sigma_fast.train.cli import parse_overrides
from sigma_fast.train.config import load_train_config
from train_helpers import CONFIGS


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


MINIMAL = """
output_dir: runs/x
model: {backbone: facebook/dinov2-base}
data:
  train: [{format: parquet, path: data/train.parquet}]
"""


def test_documented_configs_validate():
    stage1 = load_train_config(str(CONFIGS / "stage1.yaml"), stage=1)
    assert stage1.model_config().backbone == "facebook/dinov2-base"
    assert stage1.model_config().taps == (2, 5, 11)
    assert stage1.data.train[0].columns["mask"] == "mask_img"
    stage2 = load_train_config(str(CONFIGS / "stage2.yaml"), stage=2, init="runs/s1/final")
    assert stage2.init == "runs/s1/final"
    assert stage2.stage2.vae.enabled and stage2.stage2.ema.enabled and stage2.stage2.disentangle.enabled
    assert stage2.stage2.vae.scale == pytest.approx(0.18215)
    assert stage2.data.unlabelled[0].columns["mask"] is None
    for name in ("tiny_stage1.yaml", "tiny_stage2.yaml"):
        load_train_config(str(CONFIGS / name), stage=int(name[-6]))


def test_defaults_and_number_spellings(tmp_path):
    config = load_train_config(write(tmp_path, MINIMAL + "optim: {lr: 1e-4}\n"), stage=1)
    assert config.optim.lr == 1e-4  # YAML reads "1e-4" as a string: accepted as a number
    assert config.precision == "auto" and config.optim.batch_size == 32


@pytest.mark.parametrize("change, message", [
    ({"optim": {"lerning_rate": 0.1}}, "optim: unknown key(s) ['lerning_rate']"),
    ({"optim": {"lr": -1}}, "optim.lr: must be > 0"),
    ({"optim": {"steps": "ten"}}, "optim.steps: expected an integer"),
    ({"data2": {}}, "unknown key(s) ['data2']"),
    ({"precision": "fp8"}, "precision: must be one of"),
    ({"data": {"train": [{"format": "tar", "path": "x"}]}}, "data.train[0].format: must be one of"),
    ({"data": {"train": []}}, "data.train: needs at least one source"),
    ({"data": {"train": [{"format": "parquet"}]}}, "data.train[0]: missing required key(s) ['path']"),
    ({"stage2": {"ema": {"enabled": True}}}, "Stage II mechanisms are enabled but the stage is 1"),
    ({"stage2": {"vae": {"noise_fraction": 0.8, "composite_fraction": 0.5}}}, "noise_fraction + composite_fraction"),
    ({"stage2": {"ema": {"confidence": 0.3}}}, "stage2.ema.confidence: must be in (0.5, 1)"),
    ({"stage2": {"ema": {"start_step": -1}}}, "stage2.ema.start_step: must be >= 0"),
    ({"stage2": {"ema": {"augment": {"resave": 1.5}}}}, "stage2.ema.augment.resave"),
    ({"stage2": {"ema": {"augment": {"resave_scale": [0.5, 2.0]}}}}, "stage2.ema.augment.resave_scale: must be"),
    ({"stage2": {"ema": {"augment": {"resave_quality": [90, 50]}}}}, "stage2.ema.augment.resave_quality: must be"),
    ({"model": {"backbone": "x", "taps": [5, 2]}}, "model: taps must be increasing"),
    ({"model": {"backbone": "x", "depth": 3}}, "model: unknown SigmaConfig fields: ['depth']"),
])
def test_bad_configs_name_the_key(tmp_path, change, message):
    values = yaml.safe_load(MINIMAL)
    values.update(change)
    with pytest.raises(ValueError) as error:
        load_train_config(write(tmp_path, yaml.safe_dump(values)), stage=1)
    assert message in str(error.value)


def test_stage_rules(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ValueError, match="init: Stage II starts from a Stage I checkpoint"):
        load_train_config(path, stage=2, overrides={"model": None})
    with pytest.raises(ValueError, match="either `model`"):
        load_train_config(path, stage=2, init="ckpt")
    with pytest.raises(ValueError, match="EMA self-training needs unlabelled sources"):
        load_train_config(path, stage=2, init="ckpt", overrides={"model": None, "stage2.ema.enabled": True})
    with pytest.raises(ValueError, match="says stage 2 but --stage 1"):
        load_train_config(write(tmp_path, MINIMAL + "stage: 2\n"), stage=1)


def test_overrides_from_the_command_line(tmp_path):
    overrides = parse_overrides(["optim.lr=3e-4", "stage2.ema.enabled=false", "data.workers=2"])
    assert overrides == {"optim.lr": "3e-4", "stage2.ema.enabled": False, "data.workers": 2}
    config = load_train_config(write(tmp_path, MINIMAL), stage=1, overrides=overrides)
    assert config.optim.lr == 3e-4 and config.data.workers == 2
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["optim.lr"])
