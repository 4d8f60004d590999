"""Deep kNN (Bergman et al.): the anomaly score of an image is the sum of squared L2 distances from its
pooled backbone features to the `k` nearest features of the normal bank (higher = more anomalous)."""


import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors

from detectors.banked import load_banked, save_banked
from detectors.features import FeatureCache, ScoresThroughFeatures
from detectors.interface import register_format

_FORMAT = "deep_knn/1"
NORMALIZATIONS = ("none", "l2")


def scores_from_features(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(N,) sum of squared L2 distances from each row of `queries` (N, D) to its `k` nearest rows of `bank`."""
    bank = np.asarray(bank, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank and queries must be (N, D) arrays of equal D, got {bank.shape} and {queries.shape}")
    _check_k(k, len(bank))
    distances, _ = NearestNeighbors(n_neighbors=k).fit(bank).kneighbors(queries)
    return np.sum(distances ** 2, axis=1)


def normalize_features(vectors: np.ndarray, normalize: str) -> np.ndarray:
    """`vectors` (N, D) as they are ("none") or each scaled to unit L2 norm ("l2": kNN on feature directions)."""
    if normalize == "none":
        return vectors
    if normalize == "l2":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)
    raise ValueError(f"unknown feature normalisation {normalize!r}; choose from {', '.join(NORMALIZATIONS)}")


def _check_k(k, bank_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > bank_size:
        raise ValueError(f"k={k} nearest neighbours need at least {k} normal images in the bank, got {bank_size}")


class DeepKNN(ScoresThroughFeatures):
    """Deep kNN anomaly detector on frozen backbone features.

    `features` is an optional shared FeatureCache (like the `memory` of a scikit-learn Pipeline): detectors
    that share it compute each image's backbone features once. It is not a hyper-parameter.
    """

    def __init__(self, backbone: str = "mobilenet_v2", weights: str = "imagenet", layer: str = "last",
                 pooling: str = "avg", k: int = 3, normalize: str = "none",
                 features: FeatureCache | None = None):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown feature normalisation {normalize!r}; choose from {', '.join(NORMALIZATIONS)}")
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.k = k
        self.normalize = normalize
        self.features = features

    def get_params(self, deep: bool = True) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "layer": self.layer,
                "pooling": self.pooling, "k": self.k, "normalize": self.normalize}

    @property
    def backbone_keys(self) -> list[tuple[str, str]]:
        return [(self.backbone, self.weights)]

    def __repr__(self) -> str:
        return "DeepKNN(" + ", ".join(f"{name}={value!r}" for name, value in self.get_params().items()) + ")"

    def fit(self, normal_images) -> "DeepKNN":
        """Keep the pooled features of `normal_images` (uint8 HxWx3 arrays) as the normal bank `bank_`."""
        bank = self._pooled_features(normal_images)
        _check_k(self.k, len(bank))
        self.bank_ = bank
        return self

    def anomaly_scores(self, images) -> np.ndarray:
        """(N,) anomaly scores of `images` (uint8 HxWx3 arrays): higher = more anomalous."""
        if not hasattr(self, "bank_"):
            raise NotFittedError("this DeepKNN is not fitted yet: call fit(normal_images) first")
        return scores_from_features(self.bank_, self._pooled_features(images), self.k)

    def _pooled_features(self, images) -> np.ndarray:
        vectors = self._cache().features(self.backbone, self.weights, self.layer, self.pooling, images)
        self._forget_unshared()
        return normalize_features(vectors, self.normalize)

    def save(self, directory) -> None:
        """Write the hyper-parameters (params.json) and the normal bank (bank.npy) into `directory`."""
        save_banked(self, directory, _FORMAT)

    @classmethod
    def load(cls, directory, features: FeatureCache | None = None) -> "DeepKNN":
        """A detector written by `save`, scoring through `features` if given."""
        detector, bank = load_banked(cls, directory, _FORMAT, features)
        if bank.ndim != 2 or bank.dtype != np.float32:
            raise ValueError(f"corrupt saved DeepKNN in {directory}: "
                             f"bank is a {bank.dtype} array of shape {bank.shape}")
        _check_k(detector.k, len(bank))
        detector.bank_ = bank
        return detector


register_format(_FORMAT, DeepKNN.load)
