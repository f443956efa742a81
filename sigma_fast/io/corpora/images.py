"""Getting a pair's image bytes out of a corpus value without decoding them: HF image structs
`{bytes, path}`, raw bytes, or a path relative to the file that lists it. Bytes are checked only
for a known image signature, so garbage is a RowFailure here and truncated files fail at decode."""
from sigma_fast.io.corpora import sources

# (offset, magic) of the encodings PIL and the GPU decoder read
SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n"), (0, b"\xff\xd8\xff"), (0, b"GIF87a"), (0, b"GIF89a"), (0, b"BM"),
    (0, b"II*\x00"), (0, b"MM\x00*"), (0, b"\x00\x00\x00\x0cjP  "), (0, b"\xff\x4f\xff\x51"),
    (4, b"ftyp"), (0, b"P1"), (0, b"P2"), (0, b"P3"), (0, b"P4"), (0, b"P5"), (0, b"P6"),
    (0, b"\x00\x00\x01\x00"),
)


class MissingImage(ValueError):
    """A one-line reason an image could not be had."""


def looks_like_image(data):
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return any(data[offset:offset + len(magic)] == magic for offset, magic in SIGNATURES)


def image_bytes(value, folder, role):
    """-> (bytes, source path or None) for one image value; raises MissingImage with the reason.
    `folder` is where relative paths resolve (the parquet/JSON file's folder)."""
    path = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and not path:
            raise MissingImage(f"missing {role} image bytes")
    elif isinstance(value, (bytes, bytearray)):
        data = value
    elif isinstance(value, str) and value:
        data, path = None, value
    elif value is None or value == "":
        raise MissingImage(f"missing {role} image bytes")
    else:
        raise MissingImage(f"{role} image is a {type(value).__name__}, not bytes or a path")
    if data is None:
        path = sources.join(folder, path)
        try:
            data = sources.read_bytes(path)
        except OSError as error:
            raise MissingImage(f"cannot read {role} image {path!r} ({type(error).__name__})") from None
    else:
        path = None  # the struct's path is only the name the bytes had when the dataset was built
    if not data:
        raise MissingImage(f"missing {role} image bytes")
    if not looks_like_image(data):
        raise MissingImage(f"{role} image bytes are not an image (unknown signature {bytes(data[:8])!r})")
    return bytes(data), path
