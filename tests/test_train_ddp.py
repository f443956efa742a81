import csv
import os
import subprocess
import sys

import torch

from sigma_fast.train import load_train_config, train
from train_helpers import CONFIGS, write_parquet

TINY = str(CONFIGS / "tiny_stage1.yaml")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def losses_of(run):
    with open(os.path.join(run, "train.csv"), newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def head_of(run):
    from safetensors.torch import load_file

    return load_file(os.path.join(run, "final", "model.safetensors"))


def test_two_process_gloo_ddp_matches_one_process(tiny_encoders, tmp_path):
    train_path = write_parquet(tmp_path / "train.parquet", 32, row_group_size=8)
    backbone, text_encoder = tiny_encoders
    settings = {"model.backbone": backbone, "model.text_encoder": text_encoder,
                "data.train": [{"format": "parquet", "path": str(train_path)}], "data.val": [],
                "optim.steps": 4, "optim.batch_size": 8, "optim.lr": 1.0e-3, "log_every": 1, "save_every": 4}
    single = tmp_path / "single"
    train(load_train_config(TINY, stage=1, overrides={**settings, "output_dir": str(single)}), progress=False)

    distributed = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sigma_fast.cli", "train", "--stage", "1", "--config", TINY, "--quiet",
               "--set", f"output_dir={distributed}", "--set", f"model.backbone={backbone}",
               "--set", f"model.text_encoder={text_encoder}",
               "--set", f"data.train=[{{format: parquet, path: {train_path}}}]", "--set", "data.val=[]",
               "--set", "optim.steps=4", "--set", "optim.batch_size=8", "--set", "optim.lr=1.0e-3",
               "--set", "log_every=1", "--set", "save_every=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    assert len(losses_of(distributed)) == 4
    torch.testing.assert_close(torch.tensor(losses_of(distributed)), torch.tensor(losses_of(single)),
                               atol=1e-4, rtol=1e-4)
    single_head, ddp_head = head_of(single), head_of(distributed)
    assert single_head.keys() == ddp_head.keys()
    for name, value in single_head.items():
        torch.testing.assert_close(ddp_head[name], value, atol=1e-5, rtol=1e-4, msg=name)
