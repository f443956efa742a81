"""The default Semantic Transformation Parser: deterministic rules, no weights.

An instruction is cleaned, split into clauses ("remove the cup and add a plate"), and each clause is
matched against the phrasings of the editing corpora, in this order: whole-image phrasings ("as a
sketch", "apply a filter"), "instead of", "there should be (no) X", "what if ...", "X should be Y",
then the leading verb (remove / replace / change-turn-transform / make-have-let / give / paint /
move / add ...). Concepts are normalised by `sigma_fast.grounding.text`. An edit whose source (or,
for add, target) is the whole image ("make it winter", "change the background to a beach", "add
fog") is global. The first recognised clause is the tuple; the others go to `extra`.

Bad input is never an error: empty text, text longer than MAX_CHARS, text that is mostly not in the
Latin alphabet, and text no rule recognises all give the explicit action "unknown" (source and
target None); the grounder gives unknown and global edits a flat prior.
"""
import re

from sigma_fast.grounding import lexicon as lx
from sigma_fast.grounding.edit import ACTIONS, UNKNOWN, EditTuple
from sigma_fast.grounding.text import attribute_phrase, clean, is_attribute, noun_phrase, tokens

MAX_CHARS = 1000  # longer than any corpus instruction: such text is not an instruction
MIN_LATIN_SHARE = 0.7  # share of letters that must be a-z for the English rules to apply

_UNKNOWN = EditTuple(UNKNOWN)

_POLITE = re.compile(
    r"^(?:(?:please|kindly|now|also|then|and|next|finally|lastly|just|so|ok|okay|hey|can you|could you|"
    r"would you|will you|can we|could we|can i|could i|let's|lets|let us|i want you to|i'd like you to|"
    r"i would like you to|i want to|i'd like to|i would like to|we want to|we need to|you should|try to|"
    r"go ahead and|help me|i wish to|you can|you could|we should|we could|i need you to)\s+)+")
_POLITE_END = re.compile(r"\s+(?:please|for me|too|as well|also|now|thanks|thank you)$")

_CLAUSE_VERBS = (
    "add|put|place|insert|remove|delete|erase|get|take|replace|swap|switch|change|turn|make|give|let|have|"
    "paint|color|colour|move|transform|convert|apply|increase|include|draw|dye|open|close|eliminate|"
    "substitute|exchange|set|render|cover")
_SENTENCES = re.compile(r"[.;!?]+(?:\s+|$)")
_THEN = re.compile(r",?\s+(?:and\s+)?then\s+")
_AND_VERB = re.compile(rf"(?:,\s*|\s+)and\s+(?=(?:{_CLAUSE_VERBS})\b)|,\s+(?=(?:{_CLAUSE_VERBS})\b)")

_REMOVE_VERBS = re.compile(
    r"^(?:remove|delete|erase|eliminate|lose|omit|discard|ditch|exclude|wipe out|wipe away|wipe|"
    r"get rid of|take away|take out|take off|cut out|crop out|edit out|paint out|rub out|clear away|"
    r"do away with|hide)\s+(.+)$")
_TAKE = re.compile(r"^take\s+(.+?)\s+(?:out|off|away)\b.*$")
_ADD_VERBS = re.compile(
    r"^(?:add|put|place|insert|draw|include|introduce|attach|paste|hang|stick|install|create|generate|"
    r"plant|position|spawn|bring in|bring|throw in|sprinkle|scatter|incorporate|drop|set up)\s+(.+)$")
# Tried in this order, so "replace the man next to the car with a woman" splits at "with".
_REPLACE = tuple(
    re.compile(rf"^(replace|substitute|swap|switch|exchange|trade)\s+(?:out\s+)?(.+?)\s+({preposition})\s+(.+)$")
    for preposition in ("with", "by", "in favou?r of", "for", "into", "to"))
_CHANGE = re.compile(
    r"^(?:change|turn|transform|convert|morph|alter|modify|switch)\s+(.*?)\s*\b(?:into|in to|to be|to)\s+(.+)$"
    r"|^make\s+(.+?)\s+into\s+(.+)$")
_TURN_SWITCH = re.compile(r"^(?:turn|switch|flip)\s+(?:(on|off)\s+(.+)|(.+?)\s+(on|off))$")
_MAKE = re.compile(r"^(?:make|have|let|get|render)\s+(.+)$")
_GIVE = re.compile(r"^give\s+(.+)$")
_COVER = re.compile(r"^cover\s+(.+?)\s+(?:in|with)\s+(.+)$")
_PAINT = re.compile(r"^(?:paint|color|colour|dye|recolor|recolour|tint|stain|spray paint|spray-paint)\s+(.+)$")
_MOVE = re.compile(r"^(?:move|shift|slide|reposition|relocate)\s+(.+?)\s+(?:to|towards|toward)\s+(.+)$")
_STATE_VERBS = {"open": "open", "close": "closed", "shut": "closed", "light": "lit", "extinguish": "unlit",
                "rotate": "rotated", "flip": "flipped", "enlarge": "bigger", "shrink": "smaller",
                "resize": "resized", "tilt": "tilted", "fold": "folded", "unfold": "unfolded", "break": "broken",
                "melt": "melted", "burn": "burnt", "freeze": "frozen", "crack": "cracked", "fill": "full",
                "empty": "empty", "widen": "wider", "lengthen": "longer", "shorten": "shorter", "raise": "raised",
                "lower": "lowered", "wrinkle": "wrinkled", "tear": "torn", "crumple": "crumpled"}

_INSTEAD_FIRST = re.compile(
    r"^instead of\s+(.+?),?\s+(?:there should be|there is|there are|there's|put|use|add|have|place|"
    r"i want|show|make it|let there be)\s+(.+)$")
_INSTEAD_AFTER = re.compile(
    r"^(?:use|put|place|have|add|insert|show|draw)\s+(.+?)\s+(?:instead of|in place of|rather than)\s+(.+)$")
_THERE = re.compile(
    r"^(?:(?:let|have|make|can|could|should|will|would|if)\s+)?(?:there's|there\s+"
    r"(?:(?:should|needs to|need to|has to|have to|must|will|would|could|might|can|ought to)\s*(not|n't)?\s+)?"
    r"(?:be|is|are|was|were)(n't|\s+not)?)\s+(.+)$")
_WANT = re.compile(
    r"^(?:i want|i'd like|i would like|we need|we want|i need|it should have|it needs|show me|i'd love|"
    r"i would love|give me|include)\s+(.+)$")
_NO = re.compile(r"^(?:no|without|not any)\s+(.+)$")
_WHAT_IF = re.compile(r"^(?:what if|what about if|imagine if|suppose|imagine|if only|if)\s+(.+)$")
_WHAT_WOULD = re.compile(r"^(?:what|how) would (?:it|this|the (?:image|photo|picture|scene)) look\b")
_WAS = re.compile(r"^(.+?)\s+(?:was|were|is|are|became|had been|turned into|looked)\s+(.+)$")
_HAD = re.compile(r"^(.+?)\s+(?:had|has|wore|held|carried|got)\s+(.+)$")
_HAD_NOT = re.compile(
    r"^(.+?)\s+(?:(?:didn't|did not|doesn't|does not|don't|do not|wasn't|was not)\s+"
    r"(?:have|wear|hold|carry|wearing|holding|carrying)|had no|has no|wore no)\s+(.+)$")
_SHOULD_BE = re.compile(
    r"^(.+?)\s+(?:should|must|needs to|need to|has to|have to|ought to|could|would|will|can)\s*(not|n't)?\s+"
    r"(?:be|look|become|appear|seem|get)\s+(.+)$")
_MODAL_BE = re.compile(r"^(?:could|can|would|will|should|may|might)\s+(.+?)\s+(?:be|look|become)\s+(.+)$")
_SHOULD_HAVE = re.compile(
    r"^(.+?)\s+(?:should|must|needs to|need to|has to|could|can)\s*(not|n't)?\s+"
    r"(have|wear|hold|carry|get|own|be given)\s+(.+)$")
_IS = re.compile(r"^(.+?)\s+(?:is|are)\s+(?:now\s+)?(.+)$")
_STYLE_LEAD = re.compile(r"^(?:as|in)\s+(?:a|an|the)?\s*\S+")
_IT_LEAD = re.compile(r"^(?:it|this|everything)\s+(?:should|would|could|is|was|has|must|needs|will|can)\b")

_REMOVED_WORDS = {"gone", "removed", "deleted", "erased", "missing", "absent", "invisible", "eliminated"}
_DISAPPEAR = {"disappear", "vanish", "go", "leave"}
_COPULAS = {"look", "looks", "appear", "seem", "become", "be", "get"}
_LOOK_WORDS = {"look", "finish", "makeover", "color", "colour", "texture", "tint", "hue", "effect", "glow",
               "style", "tone", "appearance", "shine", "coat", "expression", "smile", "hairstyle", "haircut",
               "tan", "pattern", "paint job", "feel", "vibe", "aesthetic"}
_OBJECT_STARTS = {"a", "an", "some", "two", "three", "four", "five", "many", "several", "more", "another",
                  "the", "this", "that", "these", "those", "lots", "plenty"}
_ARTICLES = {"a", "an"}


def screen(text):
    """Why `text` cannot be an English edit instruction ("empty", "too long", "not english"), or None."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    if len(text) > MAX_CHARS:
        return "too long"
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "empty"
    latin = sum(1 for c in letters if "a" <= c.lower() <= "z")
    if latin / len(letters) < MIN_LATIN_SHARE:
        return "not english"
    return None


def split_clauses(text):
    """The clauses of an instruction, each as one cleaned string without punctuation."""
    clauses = []
    for sentence in _SENTENCES.split(clean(text)):
        for part in _THEN.split(sentence):
            clauses.extend(_AND_VERB.split(part))
    cleaned = (" ".join(tokens(clause)) for clause in clauses)
    return [clause for clause in cleaned if clause]


class RuleParser:
    """Deterministic instruction -> EditTuple parser (see the module docstring for the rules)."""

    def __call__(self, text):
        return self.parse(text)

    def parse(self, text):
        if screen(text) is not None:
            return _UNKNOWN
        edits = [edit for edit in map(parse_clause, split_clauses(text)) if edit.action != UNKNOWN]
        if not edits:
            return _UNKNOWN
        first = edits[0]
        return EditTuple(first.action, first.source, first.target, extra=tuple(edits[1:]))

    def parse_batch(self, texts):
        return [self.parse(text) for text in texts]


def parse_clause(clause):
    """One clause (cleaned, no punctuation) -> EditTuple, "unknown" when no rule matches."""
    clause = _POLITE_END.sub("", _POLITE.sub("", clause))
    if not clause:
        return _UNKNOWN
    for rule in _RULES:
        edit = rule(clause)
        if edit is not None:
            return edit
    return _UNKNOWN


# Each rule takes a clause and returns an EditTuple, or None to let the next rule try.

def _whole_image(clause):
    words = clause.split()
    if _STYLE_LEAD.match(clause) or _WHAT_WOULD.match(clause) or _IT_LEAD.match(clause):
        return EditTuple("global")
    if words[0] in lx.GLOBAL_VERBS and not clause.startswith("crop out"):
        return EditTuple("global")
    return None


def _instead(clause):
    match = _INSTEAD_FIRST.match(clause)
    if match:
        return _edit("replace", _np(match.group(1)), _np(match.group(2)))
    match = _INSTEAD_AFTER.match(clause)
    if match:
        return _edit("replace", _np(match.group(2)), _np(match.group(1)))
    return None


def _there(clause):
    match = _THERE.match(clause)
    if match:
        negated = match.group(1) or match.group(2)
        return _edit("remove", _np(match.group(3))) if negated else _exists(match.group(3))
    match = _WANT.match(clause)
    if match:
        return _exists(match.group(1))
    match = _NO.match(clause)
    if match:
        return _edit("remove", _np(match.group(1)))
    return None


def _exists(rest):
    """The object of "there should be ...": "no X" removes X, anything else adds it."""
    words = rest.split()
    if words[0] == "no" or words[:2] == ["not", "any"]:
        return _edit("remove", noun_phrase(words[2:] if words[0] == "not" else words[1:]))
    return _edit("add", target=noun_phrase(words))


def _what_if(clause):
    match = _WHAT_IF.match(clause)
    if not match:
        return None
    rest = match.group(1)
    if rest.startswith("there "):
        return _there(rest)
    match = _HAD_NOT.match(rest)
    if match:
        return _edit("remove", _np(match.group(2)))
    match = _WAS.match(rest)
    if match:
        return _copula(match.group(1).split(), match.group(2).split())
    match = _HAD.match(rest)
    if match:
        return _edit("add", target=_np(match.group(2)))
    return None


def _should(clause):
    match = _SHOULD_HAVE.match(clause)
    if match:
        subject, negated, _, obj = match.groups()
        if noun_phrase(subject.split()) is None:
            return None
        return _edit("remove", _np(obj)) if negated else _edit("add", target=_np(obj))
    match = _SHOULD_BE.match(clause)
    if match:
        subject, negated, rest = match.groups()
        return _copula(subject.split(), rest.split(), negated=bool(negated))
    match = _MODAL_BE.match(clause)
    if match:
        return _copula(match.group(1).split(), match.group(2).split())
    return None


def _copula(subject, rest, negated=False):
    """ "X should be / was / could be Y" with X and Y as word lists."""
    source = noun_phrase(subject)
    if source is None or not rest:
        return None
    if source.is_scene:
        return EditTuple("global")
    if negated and rest[0] in lx.ADD_GERUNDS and len(rest) > 1:
        return _edit("remove", noun_phrase(rest[1:]))  # "the man should not be wearing glasses"
    if negated or rest[0] in _REMOVED_WORDS:
        return _edit("remove", source)
    if rest[0] == "replaced" and len(rest) > 2:
        return _edit("replace", source, noun_phrase(rest[2:]))
    if rest[0] in lx.ADD_GERUNDS and len(rest) > 1:
        return _edit("add", target=noun_phrase(rest[1:]))
    if rest[0] == "like" and len(rest) > 1:
        rest = rest[1:]
    if rest[0] in _ARTICLES and not is_attribute(rest) and not source.property_of:
        return _edit("replace", source, noun_phrase(rest))
    if source.property_of or is_attribute(rest) or _is_pose(rest[0]):
        return _edit("attribute_change", source, attribute_phrase(rest))
    return _edit("replace", source, noun_phrase(rest))


def _is_pose(word):
    """A pose or action verb, or its -ing form ("sit", "jumping", "lying")."""
    if word in lx.POSE_VERBS:
        return True
    if not word.endswith("ing") or len(word) < 5:
        return False
    stem = word[:-3]
    candidates = {stem, stem + "e", stem[:-1], stem[:-1] + "ie" if stem.endswith("y") else stem}
    return bool(candidates & lx.POSE_VERBS)


def _remove(clause):
    match = _TAKE.match(clause) or _REMOVE_VERBS.match(clause)
    if match:
        return _edit("remove", _np(match.group(1)))
    return None


def _replace(clause):
    match = next((m for m in (pattern.match(clause) for pattern in _REPLACE) if m), None)
    if not match:
        return None
    verb, first, preposition, second = match.groups()
    if verb == "substitute" and preposition == "for":
        first, second = second, first  # "substitute a cat for the dog" puts the cat in
    if verb == "switch" and preposition in {"to", "into"}:
        return _change(first.split(), second.split())
    return _edit("replace", _np(first), _np(second))


def _turn_on_off(clause):
    match = _TURN_SWITCH.match(clause)
    if not match:
        return None
    state, subject = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
    return _edit("attribute_change", _np(subject), state)


def _change_rule(clause):
    match = _CHANGE.match(clause)
    if not match:
        return None
    subject, rest = (match.group(1) or match.group(3) or "").split(), (match.group(2) or match.group(4)).split()
    if not subject:
        return EditTuple("global")  # "convert to black and white"
    return _change(subject, rest)


def _change(subject, rest):
    """ "change X to Y": an attribute change when Y is an attribute or X names a property, else a replace."""
    source = noun_phrase(subject)
    if source is None or not rest:
        return None
    if source.property_of or is_attribute(rest):
        return _edit("attribute_change", source, attribute_phrase(rest))
    return _edit("replace", source, noun_phrase(rest))


def _make(clause):
    match = _MAKE.match(clause)
    if not match:
        return None
    words = match.group(1).split()
    if clause.startswith(("have ", "get ")) and words[0] in _OBJECT_STARTS - {"the", "this", "that"}:
        return _edit("add", target=noun_phrase(words))  # "have a plane flying over the mountains"
    return _complement(words)


def _complement(words):
    """ "make/have/let/turn X ...": X followed by a verb, a copula, "a Y", an attribute, or a noun."""
    if len(words) < 2:
        return None
    for k in range(1, len(words)):
        word = words[k]
        if not _ends_subject(words, k):
            continue
        if word in _DISAPPEAR and (word != "go" or words[k + 1:k + 2] == ["away"]):
            return _edit("remove", noun_phrase(words[:k]))
        if word in _COPULAS:
            return _copula(words[:k], words[k + 1:])
        if word == "made" or word == "out" and words[k + 1:k + 2] == ["of"]:
            return _edit("attribute_change", noun_phrase(words[:k]), attribute_phrase(words[k + 1:]))
        if word in lx.ADD_VERBS or word in lx.POSE_VERBS:
            return _action(words[:k], word, words[k + 1:])
    for k in range(1, len(words)):
        if words[k] in _ARTICLES and _ends_subject(words, k):
            rest = words[k:]
            if is_attribute(rest):
                return _edit("attribute_change", noun_phrase(words[:k]), attribute_phrase(rest))
            return _edit("replace", noun_phrase(words[:k]), noun_phrase(rest))
    for k in range(1, len(words)):
        if _ends_subject(words, k) and is_attribute(words[k:]):
            return _edit("attribute_change", noun_phrase(words[:k]), attribute_phrase(words[k:]))
    subject, rest = _split_nouns(words)
    source = noun_phrase(subject)
    if source is not None and source.property_of:
        return _edit("attribute_change", source, attribute_phrase(rest))
    return _edit("replace", source, noun_phrase(rest))


def _ends_subject(words, k):
    """Whether words[:k] can be a whole noun phrase: it does not end in a determiner or a possessor
    ("the", "the dog's"), except a lone object pronoun ("make her smile")."""
    before = words[k - 1]
    if k == 1 and before in lx.PRONOUNS:
        return True
    return before not in lx.DETERMINERS and not before.endswith(("'s", "s'"))


def _action(subject, verb, obj):
    """ "let X wear Y" adds Y; "make X smile" / "have X raise her arm" changes X's pose."""
    takes_object = obj and (obj[0] in _OBJECT_STARTS or verb not in lx.POSE_VERBS)
    if verb in lx.ADD_VERBS and takes_object:
        return _edit("add", target=noun_phrase(obj))
    if verb in lx.POSE_VERBS:
        return _edit("attribute_change", noun_phrase(subject), attribute_phrase([verb] + obj))
    return None


def _split_nouns(words):
    """ "the horses unicorns" -> ("the horses", "unicorns"); "the water lava" -> ("the water", "lava").
    With no article to split at, X ends at its first plural word when Y is plural, else after one noun."""
    start = 0
    while start < len(words) - 1 and words[start] in lx.DETERMINERS:
        start += 1
    end = start + 1
    if words[-1].endswith("s"):
        plural = next((i for i in range(start, len(words) - 1) if words[i].endswith("s")), None)
        end = plural + 1 if plural is not None else end
    return words[:end], words[end:]


def _give(clause):
    match = _GIVE.match(clause)
    if not match:
        return None
    words = match.group(1).split()
    if len(words) < 2:
        return None
    split = next((k for k in range(1, len(words)) if words[k] in _OBJECT_STARTS - {"the", "this", "that"}), None)
    if split is None:
        split = 1 if words[0] in lx.PRONOUNS else 2
    subject, obj = words[:split], words[split:]
    head = obj[-1] if obj else None
    if head in _LOOK_WORDS or " ".join(obj[-2:]) in _LOOK_WORDS:
        return _edit("attribute_change", noun_phrase(subject), attribute_phrase(obj))
    return _edit("add", target=noun_phrase(obj))


def _cover(clause):
    """ "cover the scene in fog" is global; "cover the ball with polka dots" changes the ball."""
    match = _COVER.match(clause)
    if not match:
        return None
    return _edit("attribute_change", _np(match.group(1)), attribute_phrase(match.group(2).split()))


def _paint(clause):
    match = _PAINT.match(clause)
    if not match:
        return None
    words = match.group(1).split()
    for k in range(1, len(words)):
        if is_attribute(words[k:]):
            return _edit("attribute_change", noun_phrase(words[:k]), attribute_phrase(words[k:]))
    return None


def _move(clause):
    match = _MOVE.match(clause)
    if not match:
        return None
    place = [w for w in match.group(2).split() if w not in {"the", "a", "an", "side", "of", "image", "picture"}]
    return _edit("attribute_change", _np(match.group(1)), attribute_phrase(place))


def _state(clause):
    words = clause.split()
    if words[0] in _STATE_VERBS and len(words) > 1:
        return _edit("attribute_change", noun_phrase(words[1:]), _STATE_VERBS[words[0]])
    return None


def _add(clause):
    match = _ADD_VERBS.match(clause)
    if match:
        return _edit("add", target=_np(match.group(1)))
    return None


def _turn_complement(clause):
    words = clause.split()
    if words[0] in {"turn", "change", "switch", "transform", "convert"}:
        return _complement(words[1:])
    return None


def _is(clause):
    match = _IS.match(clause)
    if match:
        return _copula(match.group(1).split(), match.group(2).split())
    return None


_RULES = (_whole_image, _instead, _there, _what_if, _should, _remove, _replace, _turn_on_off, _change_rule,
          _make, _give, _cover, _paint, _move, _state, _add, _turn_complement, _is)


def _np(phrase):
    return noun_phrase(phrase.split())


def _edit(action, source=None, target=None):
    """An EditTuple from concepts, with the whole-image checks; None when a needed concept is missing."""
    if action == "add":
        if target is None:
            return None
        if target.is_scene or target.text in lx.GLOBAL_ADDITIONS or target.text.split()[-1] in lx.GLOBAL_ADDITIONS:
            return EditTuple("global")
        return EditTuple("add", None, target.text)
    if source is None:
        return None
    if source.is_scene:
        return EditTuple("global")
    if action == "remove":
        return EditTuple("remove", source.text, None)
    if target is None:
        return None
    return EditTuple(action, source.text, target if isinstance(target, str) else target.text)


def make_edit(action, source=None, target=None):
    """An EditTuple from an action and raw phrases, normalised and checked as the rules' own results
    are; None when the action is not one of ACTIONS or a phrase it needs is missing."""
    if action == "global":
        return EditTuple("global")
    if action not in ACTIONS:
        return None
    source = noun_phrase(tokens(source)) if source else None
    if action == "attribute_change":
        target = attribute_phrase(tokens(target)) if target else None
    else:
        target = noun_phrase(tokens(target)) if target else None
    return _edit(action, source, target)


_DEFAULT = RuleParser()


def parse_instruction(text):
    """Instruction -> EditTuple with the default (rule) parser. See the module docstring."""
    return _DEFAULT.parse(text)
