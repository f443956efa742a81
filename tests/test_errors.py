"""Every user error of the CLI is one line on stderr with exit status 2 (the traceback only with
--debug), raised before any model loads; the Python API raises the same messages, typed."""
import sys

import pytest
import torch

from sigma_fast.cli import main

from train_helpers import CONFIGS


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"original": "o.png", "edited": "e.png", "instruction": "add a hat"}\n')
    return str(path)


def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# (arguments, a phrase of the one-line message); {tmp}, {manifest}, {file} are filled in below
CASES = [
    (["demo", "--checkpoint", "{tmp}/missing_checkpoint", "--out", "{tmp}/o"],
     "checkpoint folder '{tmp}/missing_checkpoint' does not exist"),
    (["demo", "--checkpoint", "{file}", "--out", "{tmp}/o"], "is a file"),
    (["demo", "--checkpoint", "{tmp}", "--out", "{tmp}/o"], "no config.json in"),
    (["demo", "--checkpoint", "nobody/no-such-model", "--out", "{tmp}/o"], "not a local folder and HF_HUB_OFFLINE"),
    (["demo", "--device", "cuda", "--out", "{tmp}/o"], "torch sees no CUDA GPU"),
    (["annotate", "--manifest", "{tmp}/nope.jsonl", "--out", "{tmp}/o"], "matches no file"),
    (["annotate", "--manifest", "{manifest}", "--out", "{file}"], "output folder '{file}' is a file"),
    (["train", "--stage", "1", "--config", "{tmp}/nope.yaml"], "training config '{tmp}/nope.yaml' not found"),
    (["train", "--stage", "1", "--config", str(CONFIGS / "quickstart_stage1.yaml"), "--set", "optim.lerning_rate=1"],
     "optim: unknown key(s) ['lerning_rate']"),
    (["train", "--stage", "1", "--config", str(CONFIGS / "quickstart_stage1.yaml"), "--set", "optim.steps=many"],
     "optim.steps: expected an integer, got 'many'"),
    (["train", "--stage", "1", "--config", str(CONFIGS / "quickstart_stage1.yaml"), "--set", "device=cuda"],
     "torch sees no CUDA GPU"),
    (["train", "--stage", "1", "--config", str(CONFIGS / "quickstart_stage1.yaml"),
      "--set", "model.backbone=embedded:nothing"], "unknown embedded encoder"),
    (["synth", "--out", "{file}", "--pairs", "2"], "output folder '{file}' is a file"),
    (["synth", "--out", "{tmp}/s", "--pairs", "0"], "--pairs must be at least 1"),
]


@pytest.mark.parametrize("arguments, message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_user_errors_are_one_line_with_status_2(arguments, message, tmp_path, manifest, monkeypatch, capsys):
    no_gpu(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "a_file").write_text("x")
    fill = {"tmp": str(tmp_path), "manifest": manifest, "file": str(tmp_path / "a_file")}
    assert main([a.format(**fill) for a in arguments]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sigma-fast: error: "), err
    assert message.format(**fill) in err and "Traceback" not in err


def test_debug_adds_the_traceback(tmp_path, capsys):
    assert main(["--debug", "demo", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("does not exist")
    assert main(["demo", "--debug", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_version(capsys):
    import sigma_fast

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"sigma-fast {sigma_fast.__version__}"


def test_python_api_raises_the_same_typed_errors(tmp_path, monkeypatch):
    from sigma_fast import Annotator
    from sigma_fast.errors import DeviceError, check_device

    with pytest.raises(FileNotFoundError, match="checkpoint folder '.*my_checkpoint' does not exist"):
        Annotator.from_pretrained(str(tmp_path / "my_checkpoint"))
    with pytest.raises(FileNotFoundError, match="checkpoint folder './my_checkpoint' does not exist"):
        Annotator.from_pretrained("./my_checkpoint")
    no_gpu(monkeypatch)
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
        check_device("cuda:0")
    assert issubclass(DeviceError, ValueError)


def test_a_missing_extra_names_it(monkeypatch):
    from sigma_fast.errors import MissingExtraError
    from sigma_fast.train.config import VaeConfig
    from sigma_fast.train.vae import VaeRoundTrip

    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    with pytest.raises(MissingExtraError, match=r"needs the `\[train\]` extra .* pip install 'sigma-fast\[train\]'"):
        VaeRoundTrip.from_config(VaeConfig(enabled=True), "cpu")
    assert issubclass(MissingExtraError, ModuleNotFoundError)


def test_encoders_missing_from_a_checkpoint_are_named(tiny_checkpoint, tmp_path):
    import json
    import shutil

    from sigma_fast.model import SigmaModel

    folder = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"] = str(tmp_path / "gone" / "backbone")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="backbone folder '.*gone/backbone' does not exist"):
        SigmaModel.from_pretrained(str(folder))
