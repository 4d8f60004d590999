"""Candidate anomaly detectors: fit on normal images, score images (higher = more anomalous).

Importing the package registers every kind's saved format, so `load_detector` reads any of them.
"""

from detectors.backbones import create_backbone, list_backbones
from detectors.clip import ClipDetector
from detectors.features import FeatureCache
from detectors.images import ImageReadError, image_digest, load_rgb
from detectors.interface import Detector, Localiser, load_detector
from detectors.knn import DeepKNN, scores_from_features
from detectors.ensemble import ScoreEnsemble
from detectors.patchcore import PatchCore
from detectors.vlad import VLAD

__all__ = [
    "ClipDetector",
    "DeepKNN",
    "Detector",
    "FeatureCache",
    "ImageReadError",
    "Localiser",
    "PatchCore",
    "ScoreEnsemble",
    "VLAD",
    "create_backbone",
    "image_digest",
    "list_backbones",
    "load_detector",
    "load_rgb",
    "scores_from_features",
]
