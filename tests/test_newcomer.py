"""The offline quick start of docs/training.md, run as written in a fresh folder: synthetic data,
Stage I, Stage II, annotate and eval with the new checkpoint, nothing downloaded."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def documented_commands():
    """The `sigma-fast ...` lines of the quick start's shell block in docs/training.md."""
    text = (ROOT / "docs" / "training.md").read_text()
    block = re.search(r"## Offline quick start.*?```sh\n(.*?)```", text, re.S).group(1)
    return [line.split()[1:] for line in block.splitlines() if line.startswith("sigma-fast ")]


@pytest.mark.slow
def test_the_documented_offline_loop_runs_as_written(tmp_path):
    pytest.importorskip("cv2")
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands name configs/ as in a checkout
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "SIGMA_FAST_AUTOTUNE": "0"}
    commands = documented_commands()
    assert [c[0] for c in commands] == ["synth", "synth", "train", "train", "annotate", "eval"]
    for command in commands:
        completed = subprocess.run([sys.executable, "-m", "sigma_fast.cli", *command, "--json"], cwd=tmp_path,
                                   env=environment, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, (command, completed.stderr[-2000:])
        assert "Loading weights" not in completed.stderr and "Traceback" not in completed.stderr
    assert os.path.isfile(tmp_path / "runs" / "quickstart_stage2" / "final" / "model.safetensors")
    assert len(json.loads((tmp_path / "annotated" / "dataset.json").read_text())) > 0
    assert os.path.isfile(tmp_path / "eval" / "eval_summary.json")
