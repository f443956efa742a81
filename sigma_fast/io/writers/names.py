"""Safe file names for corpus keys, and image formats read from headers.

Keys come from corpus fields (`img_id`, tar member names, manifest `key`) and may hold `/`, `..`,
a drive letter, NUL, or be very long. `safe_name` maps a key to a name of `[A-Za-z0-9_-]` only (no
`.`, so a webdataset reader splits `name.orig.png` at the right dot), at most `MAX_NAME` bytes.
A key that is not already such a name gets `-` + a hash of the original key appended, so two keys
that sanitise alike stay distinct; the name depends on the key alone (not on other keys or the
order), so every shard and every re-run agrees on it.
"""
import hashlib
import io
import os
import re

from PIL import Image

MAX_NAME = 120  # bytes; leaves room for suffixes such as `_original.jpeg` under a 255-byte file-name limit
HASH_CHARS = 10
UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
HASHED = re.compile(rf"-[0-9a-f]{{{HASH_CHARS}}}$")  # a key that looks hashed is hashed again
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(10)), *(f"LPT{n}" for n in range(10))}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif",
              "JPEG2000": "jp2", "PPM": "ppm", "TGA": "tga", "ICO": "ico", "MPO": "jpg"}


def key_hash(key):
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def safe_name(key):
    """A corpus key -> a file stem safe on every file system, distinct for distinct keys."""
    if not isinstance(key, str):
        raise TypeError(f"a key must be a string, got {type(key).__name__}")
    cleaned = UNSAFE.sub("_", key).strip("_-")[:MAX_NAME - HASH_CHARS - 1]
    if cleaned == key and cleaned and not HASHED.search(key) and key.upper() not in RESERVED:
        return key
    return f"{cleaned or 'key'}-{key_hash(key)}"


def image_format(data):
    """Encoded image bytes -> (PIL format name, mode, (width, height)), reading the header only."""
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.mode, image.size


def extension(pil_format):
    return EXTENSIONS.get(pil_format, (pil_format or "bin").lower())


def inside(root, path):
    """`path` after checking it resolves inside `root` (defence in depth: names are already safe)."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ValueError(f"refusing to write {path!r} outside {root!r}")
    return path
