"""What every detector kind offers, and how a saved detector of any kind is found again.

A detector is built from plain hyper-parameters (and an optional shared FeatureCache), fitted on normal
images and scores images, higher = more anomalous; kinds that localise also return anomaly maps. Each kind
saves itself as JSON and .npy files into a directory whose `params.json` (an ensemble: `ensemble.json`)
names its format; `load_detector` reads that name and hands the directory to the kind that registered it.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from detectors.features import FeatureCache

# the files that name a saved detector's format, in the order they are looked for
FORMAT_FILES = ("ensemble.json", "params.json")


@runtime_checkable
class Detector(Protocol):
    def fit(self, normal_images) -> "Detector": ...

    def anomaly_scores(self, images) -> np.ndarray: ...

    def save(self, directory) -> None: ...

    @property
    def backbone_keys(self) -> list[tuple[str, str]]:
        """The (backbone, weights) pairs it computes features with: a registered model ships their weights."""


@runtime_checkable
class Localiser(Detector, Protocol):
    def anomaly_maps(self, images) -> np.ndarray:
        """(N, H, W) float32 at the images' size (which they share), higher = more anomalous."""

    def scores_and_maps(self, images) -> tuple[np.ndarray, np.ndarray]:
        """`anomaly_scores` and `anomaly_maps` of the same images from one pass."""


Loader = Callable[[Path, "FeatureCache | None"], Detector]
_LOADERS: dict[str, Loader] = {}


def register_format(name: str, loader: Loader) -> None:
    """Let `load_detector` read directories whose format file says `name` (e.g. "deep_knn/1")."""
    if name in _LOADERS and _LOADERS[name] is not loader:
        raise ValueError(f"detector format {name!r} is already registered")
    _LOADERS[name] = loader


def list_formats() -> list[str]:
    return sorted(_LOADERS)


def saved_format(directory) -> str:
    """The format a saved detector's directory names."""
    directory = Path(directory)
    for file in FORMAT_FILES:
        if (directory / file).is_file():
            try:
                return json.loads((directory / file).read_text())["format"]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ValueError(f"corrupt saved detector in {directory}: {file} names no format ({error})") from None
    raise FileNotFoundError(f"no saved detector in {directory}: expected one of {', '.join(FORMAT_FILES)}")


def load_detector(directory, features: "FeatureCache | None" = None) -> Detector:
    """Whatever detector `save` wrote into `directory`, scoring through `features` if given."""
    name = saved_format(directory)
    if name not in _LOADERS:
        raise ValueError(f"saved detector in {directory} has format {name!r}, which no installed detector kind "
                         f"reads; known: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name](Path(directory), features)
