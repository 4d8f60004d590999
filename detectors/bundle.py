"""A fitted detector together with the weights of every backbone it scores through, in one directory.

A bundle is what a registered model carries: `detector/` as the detector saves itself (JSON and .npy) and
`backbones/<i>.safetensors`, one file per backbone and weights. Loading one builds each backbone's
architecture and fills it from its file, so it never imports a weights package, never downloads and never
unpickles: the bundle runs wherever its code and libraries are installed.
"""

from pathlib import Path

from detectors.backbones import Backbone, create_backbone, load_weights, save_weights
from detectors.features import FeatureCache
from detectors.interface import Detector, load_detector

DETECTOR_DIR = "detector"
BACKBONES_DIR = "backbones"


def save_bundle(detector: Detector, directory) -> None:
    """Write `detector` and the weights of the backbones it needs (those without parameters need none)."""
    directory = Path(directory)
    detector.save(directory / DETECTOR_DIR)
    (directory / BACKBONES_DIR).mkdir(parents=True, exist_ok=True)
    for index, backbone in enumerate(_backbones_of(detector)):
        if backbone.n_params:
            save_weights(backbone, directory / BACKBONES_DIR / f"{index}.safetensors")


def load_bundle(directory, features: FeatureCache | None = None) -> Detector:
    """The detector of a bundle, scoring through `features` (a new FeatureCache if None), into which the
    bundle's backbones are put so that none is built from a weights package or the hub."""
    directory = Path(directory)
    if not (directory / DETECTOR_DIR).is_dir():
        raise FileNotFoundError(f"no detector bundle in {directory}: expected {DETECTOR_DIR}/")
    features = FeatureCache() if features is None else features
    for path in sorted((directory / BACKBONES_DIR).glob("*.safetensors")):
        features.add_backbone(load_weights(path))
    return load_detector(directory / DETECTOR_DIR, features)


def _backbones_of(detector: Detector) -> list[Backbone]:
    """Each distinct backbone the detector (or, for an ensemble, each member) computes features with, as the
    feature cache it scores through holds it where it has one."""
    backbones = {}
    for part in getattr(detector, "members", [detector]):
        for key in part.backbone_keys:
            if key not in backbones:
                features = getattr(part, "features", None)
                backbones[key] = features.backbone(*key) if features is not None else create_backbone(*key)
    return list(backbones.values())
