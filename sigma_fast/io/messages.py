"""One-line failure reasons. Failure records are compared across runs (a resumed run must write the
same bytes), so reasons carry no object addresses (PIL names the BytesIO it could not identify)."""
import re

ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def one_line(text):
    """`text` (or an exception's message) on one line, without object addresses."""
    return " ".join(ADDRESS.sub("", str(text)).split())


def error_line(error):
    """An exception as `Type: first line of its message`, without object addresses."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {one_line(lines[0]) if lines else ''}"
