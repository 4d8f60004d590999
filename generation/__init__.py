"""Anomaly generators: normal images in, synthetic anomalies with pixel masks out; seeded and content-digested.

Build one by name with `create_generator("cutpaste", variant="scar")`; new generators join the registry with
the `@register_generator` class decorator.
"""

from generation.base import Generator
from generation.cut import CUT
from generation.cutpaste import CutPaste
from generation.diffstyle import DiffStyle
from generation.nsa import NSA
from generation.perlin import Perlin
from generation.registry import create_generator, list_generators, register_generator
from generation.synthetic_set import SyntheticSet, request_digest

__all__ = [
    "CUT",
    "CutPaste",
    "DiffStyle",
    "Generator",
    "NSA",
    "Perlin",
    "SyntheticSet",
    "create_generator",
    "list_generators",
    "register_generator",
    "request_digest",
]
