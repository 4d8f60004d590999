"""PatchCore (detectors.PatchCore) as candidates: by default the paper's standard configuration (layers early
+ mid, 10% coreset, 3x3 neighbourhood, nearest patch) on every backbone with ImageNet weights, and as the
family's negative control the same on the first backbone randomly initialised (one control: each PatchCore
candidate costs a coreset and a patch-level search, and deep kNN already brings a random twin of every
backbone); its search space tunes backbone, layers, coreset ratio, neighbourhood, k and the paper's
reweighting."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from selection.candidates import CandidateKind, CandidatePool, register_kind
from selection.search_space import SpaceBounds, search_space

if TYPE_CHECKING:
    import optuna

    from detectors import FeatureCache, PatchCore

STANDARD_LAYERS = ("early", "mid")
LAYER_CHOICES = {"early+mid": ("early", "mid"), "mid": ("mid",), "early": ("early",)}
CORESET_RATIOS = (0.01, 0.1, 0.25)
NEIGHBOURHOODS = (1, 3, 5)
MAX_K = 3  # k > 2 over a coreset degraded bottle sharply (mid, p5, 25%: k=1 0.999, k=4 0.959, k=8 0.732)


@dataclass(frozen=True)
class PatchCoreCandidate:
    backbone: str
    weights: str = "imagenet"
    layers: tuple[str, ...] = STANDARD_LAYERS
    coreset_ratio: float = 0.1
    neighbourhood: int = 3
    k: int = 1
    reweight: bool = False

    @property
    def name(self) -> str:
        suffix = "/reweight" if self.reweight else ""
        return (f"patchcore/{self.backbone}/{self.weights}/{'+'.join(self.layers)}/c{self.coreset_ratio:g}"
                f"/p{self.neighbourhood}/k{self.k}{suffix}")

    @property
    def is_control(self) -> bool:
        return self.weights != "imagenet"

    @property
    def is_standard(self) -> bool:
        return self == PatchCoreCandidate(self.backbone, self.weights)

    @property
    def params(self) -> dict:
        return {"detector": "patchcore", "backbone": self.backbone, "weights": self.weights,
                "layers": "+".join(self.layers), "coreset_ratio": self.coreset_ratio,
                "neighbourhood": self.neighbourhood, "k": self.k, "reweight": self.reweight}

    @property
    def backbone_keys(self) -> tuple[tuple[str, str], ...]:
        return ((self.backbone, self.weights),)

    def check(self, features: "FeatureCache") -> None:
        self.detector(features)  # validates every hyper-parameter against the backbone, building nothing

    def detector(self, features: "FeatureCache") -> "PatchCore":
        from detectors import PatchCore

        return PatchCore(backbone=self.backbone, weights=self.weights, layers=self.layers,
                         coreset_ratio=self.coreset_ratio, neighbourhood=self.neighbourhood, k=self.k,
                         reweight=self.reweight, features=features)


def default_candidates(pool: CandidatePool) -> list[PatchCoreCandidate]:
    """The standard configuration on every backbone; with controls, on the first one randomly initialised."""
    candidates = [PatchCoreCandidate(backbone) for backbone in pool.backbones]
    if pool.controls and pool.backbones:
        candidates.append(PatchCoreCandidate(pool.backbones[0], "random"))
    return candidates


register_kind(CandidateKind("patchcore", default_candidates))


@search_space("patchcore")
def patchcore_space(trial: "optuna.Trial", bounds: SpaceBounds) -> PatchCoreCandidate:
    """PatchCore on pretrained backbones: backbone, layers, coreset ratio, neighbourhood, k and reweighting."""
    return PatchCoreCandidate(
        backbone=trial.suggest_categorical("backbone", bounds.backbones),
        weights="imagenet",
        layers=LAYER_CHOICES[trial.suggest_categorical("layers", list(LAYER_CHOICES))],
        coreset_ratio=trial.suggest_categorical("coreset_ratio", CORESET_RATIOS),
        neighbourhood=trial.suggest_categorical("neighbourhood", NEIGHBOURHOODS),
        k=trial.suggest_int("k", 1, MAX_K),
        reweight=trial.suggest_categorical("reweight", (False, True)),
    )
