"""Optuna search spaces, one function per detector kind. Each turns a trial into a Candidate; adding a kind
(CLIP prompts, VLAD) is one more decorated function."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selection.candidates import Candidate

if TYPE_CHECKING:
    import optuna

MAX_K = 20


@dataclass(frozen=True)
class SpaceBounds:
    """What the task and the user allow: the backbones and layers to choose from, and the bank size (k can't
    exceed it)."""

    backbones: tuple[str, ...]
    layers: tuple[str, ...]
    bank_size: int


SearchSpace = Callable[["optuna.Trial", SpaceBounds], Candidate]
_SPACES: dict[str, SearchSpace] = {}


def search_space(name: str):
    def register(space: SearchSpace) -> SearchSpace:
        if name in _SPACES:
            raise ValueError(f"search space {name!r} is already registered")
        _SPACES[name] = space
        return space
    return register


def get_search_space(name: str) -> SearchSpace:
    if name not in _SPACES:
        raise ValueError(f"unknown search space {name!r}; known: {', '.join(sorted(_SPACES))}")
    return _SPACES[name]


def list_search_spaces() -> list[str]:
    return sorted(_SPACES)


@search_space("knn")
def knn_space(trial: "optuna.Trial", bounds: SpaceBounds) -> Candidate:
    """Deep kNN on pretrained backbones: backbone, layer, pooling, k (log scale) and feature normalisation."""
    from detectors.features import POOLINGS
    from detectors.knn import NORMALIZATIONS

    return Candidate(
        backbone=trial.suggest_categorical("backbone", bounds.backbones),
        weights="imagenet",
        layer=trial.suggest_categorical("layer", bounds.layers),
        pooling=trial.suggest_categorical("pooling", POOLINGS),
        k=trial.suggest_int("k", 1, min(MAX_K, bounds.bank_size), log=True),
        normalize=trial.suggest_categorical("normalize", NORMALIZATIONS),
    )
