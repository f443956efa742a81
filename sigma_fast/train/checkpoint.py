"""Resume folders: `run/checkpoints/step_NNNNNNNN/` holds the head (`save_pretrained`: config.json +
model.safetensors, loadable by `SigmaModel.from_pretrained` as is) and `training_state.safetensors`
(optimizer moments, the EMA teacher, every rank's RNG states as tensors; step, data position,
optimizer hyper-parameters, scheduler and counters as JSON metadata). `run/checkpoints/LATEST`
names the newest. Folders are written under a temporary name and renamed, so a crash never
leaves a half-written checkpoint as the latest.
"""
import json
import os
import random
import shutil

import numpy as np
import torch

from sigma_fast.model.sigma import WEIGHTS_NAME

STATE_NAME = "training_state.safetensors"
LATEST_NAME = "LATEST"
CHECKPOINTS_DIR = "checkpoints"


def step_folder(run_dir, step):
    return os.path.join(run_dir, CHECKPOINTS_DIR, f"step_{step:08d}")


def capture_rng():
    """This process's RNG states: torch (CPU and CUDA), numpy, Python."""
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
            "python": random.getstate()}


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, values, gauss_next = state["python"]
    random.setstate((version, tuple(values), gauss_next))


def _split_optimizer(state_dict):
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, scalars


def _join_optimizer(tensors, scalars, param_groups):
    state = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in scalars.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(folder, model, optimizer, scheduler, progress, teacher=None, rng_states=()):
    """Write a resume folder atomically. `progress`: JSON-able counters (step, data position...);
    `rng_states`: one `capture_rng()` per rank, in rank order."""
    from safetensors.torch import save_file

    temporary = folder + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tensors, optimizer_scalars = _split_optimizer(optimizer.state_dict())
    meta = {"progress": progress, "optimizer_param_groups": optimizer.state_dict()["param_groups"],
            "optimizer_scalars": optimizer_scalars, "scheduler": scheduler.state_dict(), "rng": []}
    if teacher is not None:
        teacher_state = teacher.state_dict()
        meta["ema_updates"] = teacher_state["updates"]
        for name, value in teacher_state["head"].items():
            tensors[f"ema.{name}"] = value.detach().float().cpu().contiguous() if value.is_floating_point() \
                else value.detach().cpu().contiguous()
    for rank, rng in enumerate(rng_states):
        tensors[f"rng.{rank}.torch"] = rng["torch"]
        for device, state in enumerate(rng["cuda"]):
            tensors[f"rng.{rank}.cuda.{device}"] = state
        meta["rng"].append({"numpy": rng["numpy"], "python": rng["python"], "cuda_devices": len(rng["cuda"])})
    save_file(tensors, os.path.join(temporary, STATE_NAME), metadata={"state": json.dumps(meta)})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)
    run_checkpoints = os.path.dirname(folder)
    pointer = os.path.join(run_checkpoints, LATEST_NAME + ".tmp")
    with open(pointer, "w") as handle:
        handle.write(os.path.basename(folder) + "\n")
    os.replace(pointer, os.path.join(run_checkpoints, LATEST_NAME))


def prune_checkpoints(run_dir, keep):
    """Delete all but the `keep` newest step folders."""
    folder = os.path.join(run_dir, CHECKPOINTS_DIR)
    steps = sorted(name for name in os.listdir(folder) if name.startswith("step_") and not name.endswith(".tmp"))
    for name in steps[:-keep]:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def resolve_resume(path):
    """A step folder as is; a run folder (or its checkpoints/) -> the folder LATEST names."""
    if os.path.isfile(os.path.join(path, STATE_NAME)):
        return path
    for candidate in (os.path.join(path, CHECKPOINTS_DIR, LATEST_NAME), os.path.join(path, LATEST_NAME)):
        if os.path.isfile(candidate):
            with open(candidate) as handle:
                folder = os.path.join(os.path.dirname(candidate), handle.read().strip())
            if os.path.isfile(os.path.join(folder, STATE_NAME)):
                return folder
    raise FileNotFoundError(f"{path!r} is neither a training checkpoint (no {STATE_NAME}) nor a run folder with one")


def load_checkpoint(folder, model, optimizer, scheduler, teacher=None, rank=0, world=1):
    """Restore the head, optimizer, scheduler, teacher and (same world size) this rank's RNG from
    `folder`; returns the saved `progress`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    model.load_head_state_dict(load_file(os.path.join(folder, WEIGHTS_NAME)))
    path = os.path.join(folder, STATE_NAME)
    with safe_open(path, framework="pt") as handle:
        meta = json.loads(handle.metadata()["state"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer_scalars"], meta["optimizer_param_groups"]))
    scheduler.load_state_dict(meta["scheduler"])
    if teacher is not None:
        if "ema_updates" not in meta:
            raise ValueError(f"{folder}: EMA self-training is enabled but the checkpoint has no EMA teacher")
        head = {name[len("ema."):]: value for name, value in tensors.items() if name.startswith("ema.")}
        teacher.load_state_dict({"updates": meta["ema_updates"], "head": head})
    if len(meta["rng"]) == world:
        saved = meta["rng"][rank]
        restore_rng({"torch": tensors[f"rng.{rank}.torch"],
                     "cuda": [tensors[f"rng.{rank}.cuda.{d}"] for d in range(saved["cuda_devices"])],
                     "numpy": saved["numpy"], "python": saved["python"]})
    return meta["progress"]
