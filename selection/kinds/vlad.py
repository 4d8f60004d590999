"""VLAD (detectors.VLAD, prototype mode) as candidates: a detector trained on anomalies generated from the
normal bank. By default, on every backbone with ImageNet weights, one VLAD per generator family it trains
on (CutPaste, Perlin, NSA: which family trained it is part of its name, and a synthetic set of the same
family judges it on anomalies of its own kind); as the negative control, the CutPaste-trained one on the
first backbone randomly initialised. Its search space tunes the learning rate, epochs, omega, beta, the
stages, the memory size and the training family."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from selection.candidates import CandidateKind, CandidatePool, register_kind
from selection.search_space import SpaceBounds, search_space

if TYPE_CHECKING:
    import optuna

    from detectors import FeatureCache
    from detectors.vlad import VLAD

FAMILIES = ("cutpaste", "perlin", "nsa")
STAGE_CHOICES = {"early+mid+last": ("early", "mid", "last"), "early+mid": ("early", "mid"), "mid+last": ("mid", "last")}
MEMORY_CHOICES = (1_000, 3_000, 10_000)  # the memory search dominates scoring: its cost grows with the size


@dataclass(frozen=True)
class VladCandidate:
    backbone: str
    weights: str = "imagenet"
    family: str = "cutpaste"
    layers: tuple[str, ...] = ("early", "mid", "last")
    epochs: int = 20
    lr: float = 1e-3
    omega: float = 6.0
    beta: float = 1.0
    memory: int = 10_000

    @property
    def name(self) -> str:
        return (f"vlad/{self.backbone}/{self.weights}/{self.family}/{'+'.join(self.layers)}/e{self.epochs}"
                f"/lr{self.lr:g}/o{self.omega:g}/b{self.beta:g}/m{self.memory}")

    @property
    def is_control(self) -> bool:
        return self.weights != "imagenet"

    @property
    def is_standard(self) -> bool:
        return self == VladCandidate(self.backbone, self.weights, self.family)

    @property
    def params(self) -> dict:
        return {"detector": "vlad", "backbone": self.backbone, "weights": self.weights, "family": self.family,
                "layers": "+".join(self.layers), "epochs": self.epochs, "lr": self.lr, "omega": self.omega,
                "beta": self.beta, "memory": self.memory}

    @property
    def backbone_keys(self) -> tuple[tuple[str, str], ...]:
        return ((self.backbone, self.weights),)

    def check(self, features: "FeatureCache") -> None:
        self.detector(features)
        features.backbone(self.backbone, self.weights)

    def detector(self, features: "FeatureCache") -> "VLAD":
        from detectors.vlad import VLAD

        return VLAD(backbone=self.backbone, weights=self.weights, layers=self.layers, family=self.family,
                    epochs=self.epochs, lr=self.lr, omega=self.omega, beta=self.beta, memory=self.memory,
                    features=features)


def default_candidates(pool: CandidatePool) -> list[VladCandidate]:
    """Per backbone, one VLAD per training family; with controls, the CutPaste one on the first backbone
    randomly initialised."""
    candidates = [VladCandidate(backbone, family=family) for backbone in pool.backbones for family in FAMILIES]
    if pool.controls and pool.backbones:
        candidates.append(VladCandidate(pool.backbones[0], "random"))
    return candidates


register_kind(CandidateKind("vlad", default_candidates))


@search_space("vlad")
def vlad_space(trial: "optuna.Trial", bounds: SpaceBounds) -> VladCandidate:
    """VLAD on pretrained backbones: backbone, training family, stages, epochs, learning rate, omega, beta and
    the memory size."""
    return VladCandidate(
        backbone=trial.suggest_categorical("backbone", bounds.backbones),
        family=trial.suggest_categorical("family", FAMILIES),
        layers=STAGE_CHOICES[trial.suggest_categorical("stages", list(STAGE_CHOICES))],
        epochs=trial.suggest_int("epochs", 5, 40, step=5),
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        omega=trial.suggest_float("omega", 1.0, 10.0),
        beta=trial.suggest_float("beta", 0.5, 2.0),
        memory=trial.suggest_categorical("memory", MEMORY_CHOICES),
    )
