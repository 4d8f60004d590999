"""Anomaly generators: normal images in, synthetic anomalies with pixel masks out; seeded and content-digested.

Build one by name with `create_generator("cutpaste", variant="scar")`; new generators join the registry with
the `@register_generator` class decorator. The generator classes are imported on first use (the diffusion
ones bring torch), so `list_generators()` answers without loading any of them.
"""

import importlib

from generation.base import Generator
from generation.registry import BUILT_IN, create_generator, list_generators, register_generator
from generation.synthetic_set import SyntheticSet, request_digest

_CLASSES = {"CUT": "cut", "CutPaste": "cutpaste", "DiffStyle": "diffstyle", "NSA": "nsa", "Perlin": "perlin"}


def __getattr__(name: str):
    if name not in _CLASSES:
        raise AttributeError(f"module 'generation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"generation.{_CLASSES[name]}"), name)


__all__ = [
    "BUILT_IN",
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
