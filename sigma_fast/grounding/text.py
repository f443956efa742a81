"""Text normalisation for the parser: concepts (noun phrases a detector can ground) and attribute phrases.

A concept keeps its pre-modifiers ("red balloon", "cup of coffee") and loses what only locates or counts
it: articles, numbers and possessive determiners, a possessor ("the man's hat" -> "hat"), and trailing
prepositional or participle clauses ("a cat sleeping on the couch" -> "cat"). Its head noun is singular.
"""
import re
from dataclasses import dataclass
from typing import Optional

from sigma_fast.grounding import lexicon as lx

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*'?")

# Attribute phrases keep these words ("stand up", "old and abandoned", "twice as big").
_ATTRIBUTE_KEEPS = {"and", "or", "as", "up", "down", "off", "out", "on", "with"}
_NOTHING = {"nothing", "none", "anything", "something", "nobody", "anyone", "there", "here"}
_LIGHT_VERBS = {"give", "do", "make", "strike", "take", "put", "show", "have"}


def clean(text):
    """Lowercase with plain apostrophes and single spaces."""
    return " ".join(text.translate(_APOSTROPHES).lower().split())


def tokens(text):
    """Words of `text` (lowercase; apostrophes and hyphens stay inside words)."""
    return _TOKEN.findall(clean(text))


def singularize(word):
    if word in lx.UNCHANGED_S or len(word) <= 3:
        return word
    if word in lx.IRREGULAR_PLURALS:
        return lx.IRREGULAR_PLURALS[word]
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zzes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")) or not word.endswith("s"):
        return word
    return word[:-1]


def _possessor(word):
    if word.endswith("'s"):
        return word[:-2]
    if word.endswith("s'"):
        return word[:-1]
    return None


def _clause_starts(words, i):
    """Whether the -ing/-ed word at i opens a clause ("sitting on the couch") rather than modifies."""
    word = words[i]
    if word in lx.ING_ED_NOUNS or len(word) <= 4 or not word.endswith(("ing", "ed")):
        return False
    following = words[i + 1] if i + 1 < len(words) else None
    return following is None or following in lx.PHRASE_BREAKS or following in lx.DETERMINERS


@dataclass(frozen=True)
class Concept:
    """A normalised noun phrase; `property_of` is True when the phrase named a property of the concept
    ("the colour of the car", "the dog's pose"), which makes the edit an attribute change."""

    text: str
    property_of: bool = False

    @property
    def is_scene(self):
        """The phrase names the whole image ("it", "the background", "the daytime scene")."""
        return self.text in lx.SCENE_WORDS or self.text.split()[-1] in lx.SCENE_HEADS


def noun_phrase(words) -> Optional[Concept]:
    """The concept a word list names, or None when it names nothing."""
    words = [w for w in words if w]
    if words and words[0] in _NOTHING:
        return None
    if len(words) == 1 and words[0] in lx.PRONOUNS:
        return Concept(lx.PRONOUNS[words[0]])
    if words and words[0] in {"it", "this", "that", "everything", "everyone", "all"} and (
            len(words) == 1 or words[1] in lx.PHRASE_BREAKS):
        return Concept("it")
    start = 0
    while start < len(words) and (words[start] in lx.DETERMINERS or words[start].isdigit()):
        start += 1
    words = words[start:]
    kept = []
    for i, word in enumerate(words):
        if kept and (word in lx.PHRASE_BREAKS or _clause_starts(words, i)):
            break
        if word == "of":
            if not kept:
                continue
            if kept[-1] in lx.CONTAINERS:
                kept.append(word)
                continue
            rest = noun_phrase(words[i + 1:])
            if kept[-1] in lx.QUANTITIES and rest is not None:
                return rest
            if kept[-1] in lx.ATTRIBUTE_NOUNS and rest is not None:
                return Concept(rest.text, property_of=True)
            break
        owner = _possessor(word)
        if owner is not None:
            following = words[i + 1] if i + 1 < len(words) else None
            if following in lx.ATTRIBUTE_NOUNS or following is None:
                return _finish(kept + [owner], property_of=following is not None)
            kept = []
            continue
        kept.append(word)
    property_of = len(kept) > 1 and kept[-1] in lx.ATTRIBUTE_NOUNS
    return _finish(kept[:-1] if property_of else kept, property_of)


def _finish(kept, property_of):
    if not kept:
        return None
    head = kept.index("of") - 1 if "of" in kept else len(kept) - 1
    kept = kept[:head] + [singularize(kept[head])] + kept[head + 1:]
    return Concept(" ".join(kept), property_of)


def attribute_phrase(words) -> Optional[str]:
    """The attribute an attribute change sets ("to bright blue" -> "bright blue", "a red colour" -> "red")."""
    words = list(words)
    while words and words[0] in {"a", "an", "the", "to", "into", "be", "look", "looks", "looking", "appear",
                                 "seem", "become", "turn", "made", "out", "of", "like", "more", "much"}:
        if words[0] == "more" and len(words) > 1 and words[1] not in lx.ADJECTIVES:
            break
        words = words[1:]
    if len(words) > 2 and words[0] in _LIGHT_VERBS and words[1] in {"a", "an", "the"}:
        words = words[2:]
    kept = []
    for word in words:
        if kept and word in lx.PHRASE_BREAKS and word not in _ATTRIBUTE_KEEPS:
            break
        kept.append(word)
    while len(kept) > 1 and kept[-1] in {"and", "or", "as", "with", "color", "colour", "tone", "shade", "one"}:
        kept.pop()
    return " ".join(kept) or None


def is_attribute(words):
    """Whether a word list is an attribute (colour, material, size, state) rather than an object."""
    words = [w for w in words if w not in {"a", "an", "the"}]
    if not words:
        return False
    if words[:2] in (["made", "of"], ["out", "of"]):
        return True
    core = lx.COLOURS | lx.MATERIALS | lx.ADJECTIVES
    if all(w in core or w in lx.MODIFIERS for w in words) and any(w in core for w in words):
        return True
    if len(words) == 1:
        word = words[0]
        if word.endswith(("ish", "ful", "ous", "less")) or word.endswith("-colored") or word.endswith("-coloured"):
            return True
        return word.endswith("ed") and len(word) > 4 and word not in lx.ING_ED_NOUNS
    return False


def canonical(phrase):
    """The comparison form of a concept or attribute: lowercase words, no leading article, last word
    singular. Concept match compares these."""
    if phrase is None:
        return None
    words = tokens(phrase)
    while words and words[0] in {"a", "an", "the"}:
        words = words[1:]
    if not words:
        return None
    return " ".join(words[:-1] + [singularize(words[-1])])
