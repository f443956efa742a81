"""Where corpus files come from: local paths, globs and directories, or fsspec URLs (`s3://`,
`hf://`, `memory://`, ...) when fsspec is installed. A source is a string: an absolute local path
or a URL. Everything is listed sorted by name so the corpus order is deterministic."""
import glob
import os
import posixpath

GLOB_CHARS = ("*", "?", "[")
# a directory stands for the parquet files or tar shards under it, else it is a folder-layout corpus
SHARD_SUFFIXES = (".parquet", ".tar", ".tar.gz", ".tgz")


def is_url(source):
    return "://" in source


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise ValueError("reading URLs needs fsspec: pip install 'sigma-fast[fsspec]'") from None
    return fsspec


def _url_fs(url):
    # -> (filesystem, path without protocol)
    return _fsspec().core.url_to_fs(url)


def is_shard(name):
    return name.lower().endswith(SHARD_SUFFIXES)


def _expand(item):
    # one input item -> sorted list of sources (empty when it matches nothing)
    if is_url(item):
        fs, path = _url_fs(item)
        if any(char in path for char in GLOB_CHARS):
            paths = [match for match in fs.glob(path) if fs.isfile(match)]
        elif fs.isdir(path):
            paths = [match for match in fs.find(path) if is_shard(match)] or [path.rstrip("/")]
        else:
            paths = [path] if fs.exists(path) else []
        return sorted(fs.unstrip_protocol(match) for match in paths)
    item = os.path.abspath(os.path.expanduser(item))
    if any(char in item for char in GLOB_CHARS):
        return sorted(path for path in glob.glob(item, recursive=True) if os.path.isfile(path))
    if os.path.isdir(item):
        shards = [os.path.join(root, name) for root, _, names in os.walk(item) for name in names
                  if is_shard(name)]
        return sorted(shards) or [item]
    return [item] if os.path.isfile(item) else []


def resolve(inputs):
    """A path, glob, directory or URL, or a list of them -> the sources, each item's matches sorted
    by name, duplicates dropped. Raises FileNotFoundError naming the first item that matches nothing."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise FileNotFoundError("no corpus input given")
    sources = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"a corpus input must be a path or URL string, got {type(item).__name__}")
        found = _expand(os.fspath(item))
        if not found:
            raise FileNotFoundError(f"corpus input {os.fspath(item)!r} matches no file")
        sources += [source for source in found if source not in sources]
    return sources


def open_binary(source):
    """A binary file object (a context manager) for a source."""
    if is_url(source):
        return _fsspec().open(source, "rb").open()
    return open(source, "rb")


def read_bytes(source):
    with open_binary(source) as handle:
        return handle.read()


def is_dir(source):
    if is_url(source):
        fs, path = _url_fs(source)
        return fs.isdir(path)
    return os.path.isdir(source)


def exists(source):
    if is_url(source):
        fs, path = _url_fs(source)
        return fs.exists(path)
    return os.path.exists(source)


def list_tree(folder):
    """Relative '/'-separated paths of every file under a folder source, sorted."""
    if is_url(folder):
        fs, path = _url_fs(folder)
        root = path.rstrip("/") + "/"
        return sorted(found[len(root):] for found in fs.find(path) if found.startswith(root))
    return sorted(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                  for root, _, names in os.walk(folder) for name in names)


def join(folder, relative):
    """`relative` resolved against a folder source; absolute paths and URLs stay as they are."""
    if is_url(relative) or os.path.isabs(relative):
        return relative
    if is_url(folder):
        protocol, path = folder.split("://", 1)
        return f"{protocol}://{posixpath.normpath(posixpath.join(path, relative))}"
    return os.path.normpath(os.path.join(folder, relative))


def parent(source):
    return source.rsplit("/", 1)[0] if is_url(source) else os.path.dirname(source)


def name(source):
    return source.rstrip("/").rsplit("/", 1)[-1] if is_url(source) else os.path.basename(source)


def stem(source):
    """The file name without its extension(s): 'train-00000-of-00002.parquet' -> 'train-00000-of-00002'."""
    base = name(source)
    for suffix in (".tar.gz",):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]


def local_path(source):
    """The absolute local path of a source, or None for a remote one."""
    if source.startswith("file://"):
        return os.path.abspath(source[len("file://"):])
    return None if is_url(source) else os.path.abspath(source)
