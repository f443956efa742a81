"""The LLM Semantic Transformation Parser: the same EditTuple schema through any `transformers` causal
LM with a chat template. The paper names Qwen2.5 without a size; the default here is
Qwen2.5-1.5B-Instruct, our choice (small enough to run beside the annotator).

Prompts are batched with left padding and decoded greedily; the first JSON object (or list) in each
reply is extracted leniently (code fences, prose around it, single quotes, trailing commas) and checked.
A reply that yields no valid edit falls back to the RuleParser; fallbacks are counted in `fallbacks`
and logged. Empty and overlong instructions give "unknown" without running the model. With a
`ParseCache` each instruction runs through the model once (see `sigma_fast.grounding.parsers`).
"""
import json
import logging
import re

from sigma_fast.grounding.device import resolve_device, resolve_dtype
from sigma_fast.grounding.edit import UNKNOWN, EditTuple
from sigma_fast.grounding.parsers import MISSING
from sigma_fast.grounding.rules import RuleParser, make_edit, screen

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"

SYSTEM_PROMPT = (
    "You convert an image-editing instruction into JSON with keys \"action\", \"source\" and \"target\".\n"
    "action is one of: add (a new object appears), remove (an object is deleted), replace (one object "
    "becomes another), attribute_change (the same object changes colour, material, size, pose, expression "
    "or state), global (the whole image changes: style, weather, season, time of day, background, "
    "filter).\n"
    "source: the object in the original image as a short noun phrase without articles (null for add and "
    "global). target: the object in the edited image (null for remove and global); for attribute_change "
    "the new attribute (\"red\", \"smiling\").\n"
    "If the instruction has several edits, give the first one and put the others in a list under "
    "\"extra\". Answer with the JSON only."
)

EXAMPLES = (
    ("put a hat on the dog", {"action": "add", "source": None, "target": "hat"}),
    ("get rid of the people in the background", {"action": "remove", "source": "person", "target": None}),
    ("turn the cat into a tiger", {"action": "replace", "source": "cat", "target": "tiger"}),
    ("make the car bright red", {"action": "attribute_change", "source": "car", "target": "bright red"}),
    ("make it look like a watercolor painting", {"action": "global", "source": None, "target": None}),
    ("remove the cup and add a plate", {"action": "remove", "source": "cup", "target": None,
                                        "extra": [{"action": "add", "source": None, "target": "plate"}]}),
)

_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_PYTHON_LITERALS = ((r"\bNone\b", "null"), (r"\bTrue\b", "true"), (r"\bFalse\b", "false"))


def extract_json(reply):
    """The first JSON object or list in a model reply, or ValueError."""
    text = _FENCE.sub("", reply)
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        candidate = _balanced(text, start)
        if candidate is None:
            continue
        for attempt in (candidate, _repair(candidate)):
            try:
                value = json.loads(attempt)
            except json.JSONDecodeError:
                continue
            if isinstance(value, (dict, list)):
                return value
    raise ValueError(f"no JSON object in {reply[:200]!r}")


def _balanced(text, start):
    """text[start:end] where the bracket opened at `start` closes (strings respected), or None."""
    depth, quote, escaped = 0, None, False
    for end in range(start, len(text)):
        char = text[end]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return text[start:end + 1]
    return None


def _repair(candidate):
    """Common near-JSON of small models: Python literals, single quotes, trailing commas."""
    for pattern, replacement in _PYTHON_LITERALS:
        candidate = re.sub(pattern, replacement, candidate)
    if '"' not in candidate:
        candidate = candidate.replace("'", '"')
    return _TRAILING_COMMA.sub(r"\1", candidate)


def edit_from_json(value):
    """A parsed reply (object, or list of objects) -> EditTuple, or ValueError when it is not a valid edit."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"expected an edit object, got {value!r}")
    first, *rest = items
    extra = first.get("extra") or []
    edits = [_one_edit(item) for item in [first, *(extra if isinstance(extra, list) else [extra]), *rest]]
    return EditTuple(edits[0].action, edits[0].source, edits[0].target, extra=tuple(edits[1:]))


def _one_edit(item):
    action = str(item.get("action", "")).strip().lower().replace(" ", "_").replace("-", "_")
    action = {"attribute": "attribute_change", "change_attribute": "attribute_change"}.get(action, action)
    source, target = (_phrase(item.get(key)) for key in ("source", "target"))
    edit = make_edit(action, source, target)
    if edit is None:
        raise ValueError(f"not a valid edit: {item!r}")
    return edit


def _phrase(value):
    if value is None or isinstance(value, (list, dict)):
        return None
    value = str(value).strip()
    return None if value.lower() in {"", "null", "none", "n/a"} else value


class LLMParser:
    """Instruction -> EditTuple through a causal LM. `fallbacks` counts replies that fell back to the
    RuleParser. `cache` (a ParseCache) keeps the replies' edits per instruction.

    Pickled (for worker processes) it carries its hub id or folder, not the model: a copy loads the
    model again on its first parse, on the device that is current in its process then."""

    def __init__(self, model, tokenizer, *, max_new_tokens=96, batch_size=16, fallback=None, cache=None,
                 model_id=None, dtype=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.fallback = fallback or RuleParser()
        self.fallbacks = 0
        self.cache = cache
        self.model_id, self.dtype = model_id, dtype

    def __getstate__(self):
        if self.model_id is None:
            raise TypeError("an LLMParser built from a model object cannot be pickled: use from_pretrained")
        return {**self.__dict__, "model": None, "tokenizer": None}

    def _load(self):
        loaded = LLMParser.from_pretrained(self.model_id, dtype=self.dtype)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer

    @classmethod
    def from_pretrained(cls, model=DEFAULT_MODEL, device=None, dtype=None, **kwargs):
        """Load a causal LM and its tokenizer (hub id or folder). `device` None = the GPU when there is
        one; `dtype` None = float32."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device, dtype = resolve_device(device), resolve_dtype(dtype)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
        return cls(lm, AutoTokenizer.from_pretrained(model), model_id=model, dtype=dtype, **kwargs)

    def prompt(self, text):
        """The chat-formatted prompt for one instruction: system rules, worked examples, the instruction."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for example, answer in EXAMPLES:
            messages.append({"role": "user", "content": example})
            messages.append({"role": "assistant", "content": json.dumps(answer)})
        messages.append({"role": "user", "content": text.strip()})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, text):
        return self.parse(text)

    def parse(self, text):
        return self.parse_batch([text])[0]

    def parse_batch(self, texts):
        results = [EditTuple(UNKNOWN) if screen(text) in ("empty", "too long") else None for text in texts]
        pending = []
        for i, result in enumerate(results):
            cached = MISSING if result is not None or self.cache is None else self.cache.get(texts[i])
            if cached is not MISSING:
                results[i] = self.fallback.parse(texts[i]) if cached is None else cached
            elif result is None:
                pending.append(i)
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            for i, reply in zip(chunk, self.generate([texts[i] for i in chunk])):
                edit = self._read(texts[i], reply)
                if self.cache is not None:
                    self.cache.put(texts[i], edit)
                results[i] = self.fallback.parse(texts[i]) if edit is None else edit
        return results

    def generate(self, texts):
        """The model's replies (new tokens only, decoded) for a batch of instructions."""
        import torch

        if self.model is None:
            self._load()
        prompts = [self.prompt(text) for text in texts]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {name: value.to(self.model.device) for name, value in inputs.items()}
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)  # (B, prompt + new)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends here
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def _read(self, text, reply):
        """The reply's edit, or None (counted and logged) when it holds none."""
        try:
            return edit_from_json(extract_json(reply))
        except ValueError as error:
            self.fallbacks += 1
            logger.warning("LLM parser fell back to rules (%d so far) for %r: %s", self.fallbacks, text[:120], error)
            return None
