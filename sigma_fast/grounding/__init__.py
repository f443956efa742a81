"""Semantic Transformation Parser and grounded spatial prior.

Parsing needs no weights and imports nothing heavy; the LLM parser and the grounder load
`transformers` models on first use.
"""
import importlib

from sigma_fast.grounding.edit import ACTIONS, ALL_ACTIONS, UNKNOWN, EditTuple
from sigma_fast.grounding.rules import RuleParser, parse_instruction

_LAZY = {
    "LLMParser": "sigma_fast.grounding.llm",
    "Grounder": "sigma_fast.grounding.grounder",
    "GroundingResult": "sigma_fast.grounding.prior",
    "flat_prior": "sigma_fast.grounding.prior",
    "prior_from_masks": "sigma_fast.grounding.prior",
}

__all__ = ["ACTIONS", "ALL_ACTIONS", "UNKNOWN", "EditTuple", "RuleParser", "parse_instruction", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sigma_fast.grounding' has no attribute {name!r}")
