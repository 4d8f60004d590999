"""Candidates: a detector plus its hyper-parameters. A candidate's name is its identity in MLflow and Optuna."""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the detectors bring torch: imported where a detector is built
    from detectors import DeepKNN, FeatureCache

OFFLINE_BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
PIXEL_CONTROLS = ("pixels_16", "pixels_32")
LAYERS = ("last", "mid")
ENSEMBLES = ("none", "pretrained", *LAYERS)  # which candidates a score ensemble joins (see ensemble_candidate)


@dataclass(frozen=True)
class Candidate:
    backbone: str
    weights: str = "imagenet"
    layer: str = "last"
    pooling: str = "avg"
    k: int = 3
    normalize: str = "none"

    @property
    def name(self) -> str:
        suffix = "" if self.normalize == "none" else f"/{self.normalize}"
        return f"knn/{self.backbone}/{self.weights}/{self.layer}/{self.pooling}/k{self.k}{suffix}"

    @property
    def is_control(self) -> bool:
        """Negative controls (random weights, raw pixels) should rank at the bottom of a trustworthy set."""
        return self.weights != "imagenet"

    @property
    def params(self) -> dict:
        return {"detector": "deep_knn", **asdict(self)}

    def detector(self, features: "FeatureCache") -> "DeepKNN":
        from detectors import DeepKNN

        return DeepKNN(backbone=self.backbone, weights=self.weights, layer=self.layer,
                       pooling=self.pooling, k=self.k, normalize=self.normalize, features=features)


def default_candidates(backbones=OFFLINE_BACKBONES, layers=LAYERS, k: int = 3, controls: bool = True) -> list[Candidate]:
    """Every backbone at every layer with ImageNet weights; with `controls`, each of them randomly initialised
    too (the same architecture without what pretraining taught it) and raw-pixel kNN."""
    weights = ("imagenet", "random") if controls else ("imagenet",)
    candidates = [Candidate(b, w, layer, "avg", k) for w in weights for b in backbones for layer in layers]
    if controls:
        candidates += [Candidate(p, "none", "raw", "avg", k) for p in PIXEL_CONTROLS]
    return candidates


@dataclass(frozen=True)
class EnsembleCandidate:
    """The score ensemble of several candidates (detectors.ScoreEnsemble, members weighted by their backbone's
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
    def params(self) -> dict:
        return {"detector": "score_ensemble", "members": ",".join(member.name for member in self.members),
                "member_weights": "backbone parameters"}


def ensemble_candidate(spec: str, candidates: list[Candidate]) -> EnsembleCandidate | None:
    """The ensemble `spec` names: "pretrained" (every pretrained candidate), "last" or "mid" (the pretrained
    candidates at that layer), or "none". None also where fewer than two candidates would join."""
    if spec not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {spec!r}; choose from {', '.join(ENSEMBLES)}")
    pretrained = [c for c in candidates if not c.is_control]
    members = pretrained if spec == "pretrained" else [c for c in pretrained if c.layer == spec]
    if spec == "none" or len(members) < 2:
        return None
    return EnsembleCandidate(tuple(members), f"{spec}-{len(members)}")
