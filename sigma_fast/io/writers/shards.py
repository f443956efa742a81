"""The shard protocol and the run's settings fingerprint.

Shard `s` holds the rows with index in [s*S, (s+1)*S). It is written into `shards/.{s:05d}.partial/`
and, once complete, its done record (`done.json`: row counts) is written there and the folder is
renamed to `shards/{s:05d}/`: a shard folder under its final name is complete, anything else is
redone. Files outside a shard folder (a webdataset tar) are written under a temporary name and
renamed before the shard folder is, so a kill between the two only redoes the shard, which writes
the same bytes again.

`run.json` holds the settings that decide the output's bytes; a re-run into the folder with other
settings is refused with the difference named, `--overwrite` starts over.
"""
import hashlib
import json
import os
import shutil

import torch

RUN_FILE = "run.json"
SHARDS = "shards"
DONE = "done.json"
# everything a run writes in OUT (removed by --overwrite; nothing else in OUT is touched)
OUTPUTS = (RUN_FILE, SHARDS, "dataset.json", "metadata.jsonl", "failures.jsonl", "stats.json", "webdataset",
           "benco")


def write_json(path, value, indent=None):
    """Write JSON under a temporary name, then rename: never a half-written file under `path`."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=indent, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def shard_dir(out_dir, shard):
    return os.path.join(out_dir, SHARDS, f"{shard:05d}")


def partial_dir(out_dir, shard):
    return os.path.join(out_dir, SHARDS, f".{shard:05d}.partial")


def start_shard(out_dir, shard):
    """A fresh, empty partial folder for `shard` (a leftover from a killed run is discarded)."""
    path = partial_dir(out_dir, shard)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def commit_shard(out_dir, shard, record):
    """Write the done record and rename the partial folder to its final name."""
    path = partial_dir(out_dir, shard)
    write_json(os.path.join(path, DONE), record)
    final = shard_dir(out_dir, shard)
    shutil.rmtree(final, ignore_errors=True)  # only when a short last shard is redone for a longer corpus
    os.rename(path, final)


def done_shards(out_dir):
    """{shard: done record} for every complete shard in `out_dir`."""
    folder = os.path.join(out_dir, SHARDS)
    done = {}
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            record = os.path.join(folder, name, DONE)
            if name.isdigit() and os.path.isfile(record):
                with open(record) as handle:
                    done[int(name)] = json.load(handle)
    return done


def model_hash(model):
    """sha256 of the model's configuration and weights (their bytes), so that two checkpoint folders
    with the same content agree and a retrained one does not."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def relative_to(out_dir, path):
    """`path` relative to `out_dir` when it lies inside it (the record survives a move), else as given."""
    out_dir, absolute = os.path.abspath(out_dir), os.path.abspath(path)
    return os.path.relpath(absolute, out_dir) if absolute.startswith(out_dir + os.sep) else path


def settings_difference(old, new):
    """One line naming the settings that differ, or None."""
    names = sorted(set(old) | set(new))
    changed = [f"{name} {old.get(name)!r} -> {new.get(name)!r}" for name in names if old.get(name) != new.get(name)]
    if not changed:
        return None
    shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
    return shown


def prepare_output(out_dir, settings, overwrite=False):
    """Create `out_dir` for a run with `settings`: refuse a folder written with other settings,
    clear it with `overwrite`. Raises ValueError with one line."""
    os.makedirs(out_dir, exist_ok=True)
    run_file = os.path.join(out_dir, RUN_FILE)
    if overwrite:
        for name in OUTPUTS:
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    elif os.path.isfile(run_file):
        with open(run_file) as handle:
            old = json.load(handle)
        difference = settings_difference(old, settings)
        if difference:
            raise ValueError(f"{out_dir} was written with other settings ({difference}); "
                             "use the same settings to resume, or --overwrite to start over")
    elif os.path.isdir(os.path.join(out_dir, SHARDS)):
        raise ValueError(f"{out_dir} holds shards but no {RUN_FILE}; use --overwrite to start over")
    os.makedirs(os.path.join(out_dir, SHARDS), exist_ok=True)
    write_json(run_file, settings, indent=1)
