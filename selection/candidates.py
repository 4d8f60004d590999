"""Candidates: a detector kind plus its hyper-parameters. A candidate's name is its identity in MLflow and Optuna.

Each kind lives in a module of selection/kinds/ and registers a CandidateKind (how its default candidates
follow from what the user allows) and its Optuna search space (selection/search_space.py). The pipeline,
the search, tracking and the registry handle candidates only through the Candidate protocol. Importing this
module stays light: a kind's module is imported when the kind is first asked for, and detectors (torch) only
when a candidate builds one.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from detectors import Detector, FeatureCache

OFFLINE_BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
DEFAULT_CLIP_MODEL = "clip:ViT-B-16-plus-240@laion400m_e31"  # SWSA's and WinCLIP's (from the hub on first use)
LAYERS = ("last", "mid")
ENSEMBLES = ("none", "pretrained", "standard", *LAYERS)  # which candidates a score ensemble joins (ensemble_candidate)
BUILT_IN_KINDS = {"knn": "selection.kinds.knn", "patchcore": "selection.kinds.patchcore",  # name -> its module
                  "clip": "selection.kinds.clip", "vlad": "selection.kinds.vlad"}


class Candidate(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def is_control(self) -> bool:
        """Negative controls (random weights, raw pixels) should rank at the bottom of a trustworthy set."""

    @property
    def is_standard(self) -> bool:
        """The kind's standard configuration of its backbone: what a user would take without evidence."""

    @property
    def params(self) -> dict:
        """The hyper-parameters as MLflow records them, the kind under "detector"."""

    @property
    def backbone_keys(self) -> tuple[tuple[str, str], ...]:
        """The (backbone, weights) pairs its detector computes features with."""

    def check(self, features: "FeatureCache") -> None:
        """Raise ValueError on what cannot work (an unknown backbone or layer) before any image is read."""

    def detector(self, features: "FeatureCache") -> "Detector": ...


@dataclass(frozen=True)
class CandidatePool:
    """What the user allows: the backbones and layers to build candidates on, kNN's k, whether negative
    controls join, the CLIP models, and what prompts call the object."""

    backbones: tuple[str, ...] = OFFLINE_BACKBONES
    layers: tuple[str, ...] = LAYERS
    k: int = 3
    controls: bool = True
    clip_models: tuple[str, ...] = (DEFAULT_CLIP_MODEL,)
    object_name: str = "object"


@dataclass(frozen=True)
class CandidateKind:
    name: str
    defaults: Callable[[CandidatePool], list[Candidate]]  # the candidates `selection.run` ranks by default


_KINDS: dict[str, CandidateKind] = {}


def register_kind(kind: CandidateKind) -> CandidateKind:
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"detector kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def load_built_in_kinds() -> None:
    for module in BUILT_IN_KINDS.values():
        importlib.import_module(module)


def list_kinds() -> list[str]:
    load_built_in_kinds()
    return sorted(_KINDS)


def get_kind(name: str) -> CandidateKind:
    if name not in _KINDS and name in BUILT_IN_KINDS:
        importlib.import_module(BUILT_IN_KINDS[name])
    if name not in _KINDS:
        raise ValueError(f"unknown detector kind {name!r}; known: {', '.join(list_kinds())}")
    return _KINDS[name]


def default_candidates(pool: CandidatePool = CandidatePool(), kinds: tuple[str, ...] = ("knn",)) -> list[Candidate]:
    """Every named kind's default candidates for `pool`, kind by kind."""
    return [candidate for kind in kinds for candidate in get_kind(kind).defaults(pool)]


def backbone_parameters(candidate: Candidate, features: "FeatureCache") -> int:
    """How many parameters the candidate's backbones have together: its size, as "take the largest" means it."""
    return sum(features.backbone(*key).n_params for key in candidate.backbone_keys)


def largest_pretrained(candidates: list[Candidate], features: "FeatureCache") -> Candidate | None:
    """The no-evidence baseline: the pretrained candidate with the most backbone parameters, in its kind's
    standard configuration (deep kNN: the last layer). Between kinds on the same backbone, the one that comes
    first in `candidates` (`--detectors knn,patchcore`: deep kNN, the family whose baseline the quality
    benchmark has always measured)."""
    pretrained = [c for c in candidates if not c.is_control]
    if not pretrained:
        return None
    _, largest = min(enumerate(pretrained), key=lambda item: (-backbone_parameters(item[1], features),
                                                               not item[1].is_standard, item[0]))
    return largest


@dataclass(frozen=True)
class EnsembleCandidate:
    """The score ensemble of several candidates (detectors.ScoreEnsemble, members weighted by their backbones'
    parameter count): ranked, decided on and registered like any candidate."""

    members: tuple[Candidate, ...]
    label: str

    @property
    def name(self) -> str:
        return f"ensemble/{self.label}"

    @property
    def is_control(self) -> bool:
        return False

    @property
    def is_standard(self) -> bool:
        return False

    @property
    def params(self) -> dict:
        return {"detector": "score_ensemble", "members": ",".join(member.name for member in self.members),
                "member_weights": "backbone parameters"}

    @property
    def backbone_keys(self) -> tuple[tuple[str, str], ...]:
        return tuple(dict.fromkeys(key for member in self.members for key in member.backbone_keys))


def ensemble_candidate(spec: str, candidates: list[Candidate]) -> EnsembleCandidate | None:
    """The ensemble `spec` names: "pretrained" (every pretrained candidate), "standard" (the pretrained
    candidates in their kind's standard configuration: deep kNN at the last layer, PatchCore's paper setting;
    across detector families), "last" or "mid" (the pretrained candidates at that layer), or "none". None also
    where fewer than two candidates would join."""
    if spec not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {spec!r}; choose from {', '.join(ENSEMBLES)}")
    pretrained = [c for c in candidates if not c.is_control]
    if spec in ("pretrained", "standard"):
        members = [c for c in pretrained if spec == "pretrained" or c.is_standard]
    else:
        members = [c for c in pretrained if getattr(c, "layer", None) == spec]
    if spec == "none" or len(members) < 2:
        return None
    return EnsembleCandidate(tuple(members), f"{spec}-{len(members)}")
