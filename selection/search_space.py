"""Optuna search spaces, registered by name: each turns a trial into a candidate. A detector kind's module
(selection/kinds/) registers the kind's space under the kind's name; `--space` chooses one."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selection.candidates import load_built_in_kinds

if TYPE_CHECKING:
    import optuna

    from selection.candidates import Candidate


@dataclass(frozen=True)
class SpaceBounds:
    """What the task and the user allow: the backbones and layers to choose from, the bank size (k can't
    exceed it), the CLIP models, and what prompts call the object."""

    backbones: tuple[str, ...]
    layers: tuple[str, ...]
    bank_size: int
    clip_models: tuple[str, ...] = ()
    object_name: str = "object"


SearchSpace = Callable[["optuna.Trial", SpaceBounds], "Candidate"]
_SPACES: dict[str, SearchSpace] = {}


def search_space(name: str):
    def register(space: SearchSpace) -> SearchSpace:
        if name in _SPACES:
            raise ValueError(f"search space {name!r} is already registered")
        _SPACES[name] = space
        return space
    return register


def get_search_space(name: str) -> SearchSpace:
    load_built_in_kinds()
    if name not in _SPACES:
        raise ValueError(f"unknown search space {name!r}; known: {', '.join(sorted(_SPACES))}")
    return _SPACES[name]


def list_search_spaces() -> list[str]:
    load_built_in_kinds()
    return sorted(_SPACES)
