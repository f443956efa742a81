"""Choosing the Semantic Transformation Parser (`--parser rules|llm`) and caching the LLM's parses.

The LLM parser's replies are cached per instruction, keyed by the model id and the instruction's
hash: in memory, and on disk as one small JSON file per entry, so a re-run (or another command on
the same instructions) does not run the model again. An entry whose reply held no valid edit is
stored as such, and the rules are applied again when it is read, so it follows the rules' fixes.
A model that cannot be loaded (offline, missing folder, missing dependency) gives one warning and
the rule parser.
"""
import hashlib
import json
import logging
import os
import tempfile

from sigma_fast.grounding.edit import EditTuple
from sigma_fast.grounding.rules import parse_instruction

logger = logging.getLogger(__name__)

PARSERS = ("rules", "llm")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "sigma_fast", "parses")
MISSING = object()  # not in the cache (a cached None means: the model gave no valid edit)


def edit_from_dict(values):
    """`EditTuple.to_dict()` -> the EditTuple."""
    extra = tuple(edit_from_dict(item) for item in values.get("extra") or ())
    return EditTuple(values["action"], values.get("source"), values.get("target"), extra=extra)


class ParseCache:
    """The LLM's parses of one model: `get(text)` -> EditTuple, None (no valid edit) or MISSING;
    `put(text, edit)`. `folder` None keeps them in memory only."""

    def __init__(self, model_id, folder=None):
        self.model_id = str(model_id)
        self.folder = None if folder is None else os.path.expanduser(folder)
        self._memory = {}
        if self.folder is not None:
            os.makedirs(self.folder, exist_ok=True)

    def __len__(self):
        return len(self._memory)

    def key(self, text):
        return hashlib.blake2b(f"{self.model_id}\n{text}".encode(), digest_size=20).hexdigest()

    def get(self, text):
        key = self.key(text)
        if key in self._memory:
            return self._memory[key]
        if self.folder is None or not os.path.isfile(self._path(key)):
            return MISSING
        with open(self._path(key)) as handle:
            entry = json.load(handle)
        edit = None if entry["edit"] is None else edit_from_dict(entry["edit"])
        self._memory[key] = edit
        return edit

    def put(self, text, edit):
        key = self.key(text)
        self._memory[key] = edit
        if self.folder is None:
            return
        entry = {"model": self.model_id, "instruction": text, "edit": None if edit is None else edit.to_dict()}
        # written to a temporary name and renamed: a killed run never leaves a torn entry
        handle, partial = tempfile.mkstemp(dir=self.folder, suffix=".part")
        with os.fdopen(handle, "w") as stream:
            json.dump(entry, stream)
        os.replace(partial, self._path(key))

    def _path(self, key):
        return os.path.join(self.folder, f"{key}.json")


def parse_all(parser, instructions):
    """Parsed edits, one per instruction: in one batch where the parser has one (the LLM parser)."""
    if hasattr(parser, "parse_batch"):
        return parser.parse_batch(list(instructions))
    return [parser(text) for text in instructions]


def load_parser(kind="rules", model=None, cache_dir=DEFAULT_CACHE_DIR, device=None, dtype=None):
    """The parser a command runs: `parse_instruction` for "rules"; for "llm" an `LLMParser` on
    `model` (hub id or folder; None = the default) whose parses are cached under `cache_dir` (None:
    in memory only), or, when that model cannot be loaded, one warning and `parse_instruction`."""
    if kind not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS}, got {kind!r}")
    if kind == "rules":
        return parse_instruction
    from sigma_fast.grounding.llm import DEFAULT_MODEL, LLMParser

    model = model or DEFAULT_MODEL
    try:
        return LLMParser.from_pretrained(model, device=device, dtype=dtype, cache=ParseCache(model, cache_dir))
    except (OSError, ImportError, ValueError, KeyError) as error:
        # hub offline, missing folder or weights, an unknown architecture, no transformers
        message = " ".join(str(error).split())[:300]
        logger.warning("LLM parser %r could not be loaded (%s: %s); using the rule parser", model,
                       type(error).__name__, message)
        return parse_instruction
