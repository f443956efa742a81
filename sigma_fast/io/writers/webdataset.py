"""Webdataset output: `webdataset/shard-{s:05d}.tar`, one tar per shard.

Per kept pair, members `<name>.orig.<ext>` and `<name>.edit.<ext>` (the input's bytes, not
re-encoded), `<name>.mask.png` (0/255, the edited image's size) and `<name>.json` (key, instruction,
parsed edit, score, flags). Deterministic bytes: pairs in input order, each pair's members sorted by
name, every header with mtime 0, uid/gid 0, no user names, mode 0644. Names hold no `.`, so a
webdataset reader splits `name.orig.jpg` into key `name` and suffix `orig.jpg`.
"""
import io
import os
import tarfile

FOLDER = "webdataset"


def tar_path(out_dir, shard):
    return os.path.join(out_dir, FOLDER, f"shard-{shard:05d}.tar")


class TarShard:
    """A shard's tar, written under a temporary name and renamed by `close`."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".partial")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)

    def add(self, name, members):
        """`members`: {suffix: bytes}, e.g. {"orig.jpg": ..., "mask.png": ..., "json": ...}."""
        for suffix in sorted(members):
            info = tarfile.TarInfo(f"{name}.{suffix}")
            info.size, info.mtime, info.mode = len(members[suffix]), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(members[suffix]))

    def close(self):
        self.tar.close()
        os.replace(self.tmp, self.path)
