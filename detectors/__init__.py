"""Candidate anomaly detectors: fit on normal images, score images (higher = more anomalous)."""

from detectors import _torchvision_fix

_torchvision_fix.apply()

from detectors.backbones import create_backbone, list_backbones  # noqa: E402  (after the fix)
from detectors.features import FeatureCache  # noqa: E402
from detectors.images import ImageReadError, image_digest, load_rgb  # noqa: E402
from detectors.knn import DeepKNN, scores_from_features  # noqa: E402
from detectors.ensemble import ScoreEnsemble, load_detector  # noqa: E402

__all__ = [
    "DeepKNN",
    "FeatureCache",
    "ImageReadError",
    "ScoreEnsemble",
    "create_backbone",
    "image_digest",
    "list_backbones",
    "load_detector",
    "load_rgb",
    "scores_from_features",
]
