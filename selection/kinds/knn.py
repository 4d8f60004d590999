"""Deep kNN on pooled features of a frozen backbone (detectors.DeepKNN) as candidates: by default every
backbone at every layer with ImageNet weights, and as negative controls the same networks randomly
initialised and raw-pixel kNN; its search space tunes backbone, layer, pooling, k and normalisation."""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from selection.candidates import CandidateKind, CandidatePool, register_kind
from selection.search_space import SpaceBounds, search_space

if TYPE_CHECKING:
    import optuna

    from detectors import DeepKNN, FeatureCache

PIXEL_CONTROLS = ("pixels_16", "pixels_32")
MAX_K = 20


@dataclass(frozen=True)
class KnnCandidate:
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
        return self.weights != "imagenet"

    @property
    def is_standard(self) -> bool:
        return self.layer == "last"

    @property
    def params(self) -> dict:
        return {"detector": "deep_knn", **asdict(self)}

    @property
    def backbone_keys(self) -> tuple[tuple[str, str], ...]:
        return ((self.backbone, self.weights),)

    def check(self, features: "FeatureCache") -> None:
        layers = features.backbone(self.backbone, self.weights).layers
        if self.layer not in layers:
            raise ValueError(f"backbone {self.backbone!r} has no layer {self.layer!r}; its layers: {', '.join(layers)}")

    def detector(self, features: "FeatureCache") -> "DeepKNN":
        from detectors import DeepKNN

        return DeepKNN(backbone=self.backbone, weights=self.weights, layer=self.layer,
                       pooling=self.pooling, k=self.k, normalize=self.normalize, features=features)


def default_candidates(pool: CandidatePool) -> list[KnnCandidate]:
    """Every backbone at every layer with ImageNet weights; with controls, each of them randomly initialised
    too (the same architecture without what pretraining taught it) and raw-pixel kNN."""
    weights = ("imagenet", "random") if pool.controls else ("imagenet",)
    candidates = [KnnCandidate(b, w, layer, "avg", pool.k) for w in weights for b in pool.backbones for layer in pool.layers]
    if pool.controls:
        candidates += [KnnCandidate(p, "none", "raw", "avg", pool.k) for p in PIXEL_CONTROLS]
    return candidates


register_kind(CandidateKind("knn", default_candidates))


@search_space("knn")
def knn_space(trial: "optuna.Trial", bounds: SpaceBounds) -> KnnCandidate:
    """Deep kNN on pretrained backbones: backbone, layer, pooling, k (log scale) and feature normalisation."""
    from detectors.features import POOLINGS
    from detectors.knn import NORMALIZATIONS

    return KnnCandidate(
        backbone=trial.suggest_categorical("backbone", bounds.backbones),
        weights="imagenet",
        layer=trial.suggest_categorical("layer", bounds.layers),
        pooling=trial.suggest_categorical("pooling", POOLINGS),
        k=trial.suggest_int("k", 1, min(MAX_K, bounds.bank_size), log=True),
        normalize=trial.suggest_categorical("normalize", NORMALIZATIONS),
    )
