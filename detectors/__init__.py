"""Candidate anomaly detectors: fit on normal images, score images (higher = more anomalous)."""

from detectors.backbones import create_backbone, list_backbones
from detectors.features import FeatureCache
from detectors.images import ImageReadError, image_digest, load_rgb
from detectors.knn import DeepKNN, scores_from_features
from detectors.ensemble import ScoreEnsemble, load_detector

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
