"""The parsed form of an edit instruction: what the Semantic Transformation Parser produces."""
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

ACTIONS = ("add", "remove", "attribute_change", "replace", "global")
# Not an edit the parser recognised (empty, non-English, overlong or unparseable text): a flat prior.
UNKNOWN = "unknown"
ALL_ACTIONS = ACTIONS + (UNKNOWN,)


@dataclass(frozen=True)
class EditTuple:
    """(action, source, target): `source` is the concept in the original image (None for add and
    global), `target` the concept in the edited image (None for remove and global; for
    attribute_change the changed attribute phrase). `extra` holds further edits of a
    multi-clause instruction. `action` is one of ACTIONS, or "unknown" (source and target None)."""

    action: str
    source: Optional[str] = None
    target: Optional[str] = None
    extra: Tuple["EditTuple", ...] = field(default=())

    def to_dict(self):
        return asdict(self)

    @property
    def is_local(self):
        """Whether the edit names something to ground (not global, not unknown)."""
        return self.action not in ("global", UNKNOWN)

    def all_edits(self):
        """This edit followed by the further edits of its instruction."""
        return (self,) + tuple(self.extra)
