"""Generators by name: `@register_generator` on a class, `create_generator(name, **params)` to build one.

The built-in generators are listed here by the module that registers them, which is imported on first use.
"""

import importlib

from generation.base import Generator

BUILT_IN = {"cutpaste": "generation.cutpaste", "perlin": "generation.perlin", "nsa": "generation.nsa",
            "diffstyle": "generation.diffstyle", "cut": "generation.cut"}

_GENERATORS: dict[str, type[Generator]] = {}


def register_generator(cls: type[Generator]) -> type[Generator]:
    """Class decorator: make `cls` available to `create_generator` under `cls.name`."""
    if cls.name in _GENERATORS:
        raise ValueError(f"a generator named {cls.name!r} is already registered ({_GENERATORS[cls.name].__name__})")
    _GENERATORS[cls.name] = cls
    return cls


def list_generators() -> list[str]:
    return sorted(set(BUILT_IN) | set(_GENERATORS))


def create_generator(name: str, **params) -> Generator:
    """The generator registered as `name`, built from keyword hyper-parameters `params`."""
    if name not in _GENERATORS and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    if name not in _GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known generators: {', '.join(list_generators())}")
    return _GENERATORS[name](**params)
