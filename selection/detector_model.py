"""The MLflow pyfunc wrapper of a fitted detector of any kind, logged as code (MLflow's
models-from-code) so that loading a registered model runs this file instead of unpickling an object. Its
artefact is a detector bundle (detectors/bundle.py): the backbones' weights travel with the model.

Input: a DataFrame with an `image` column (image files, base64-encoded as JSON carries them, or bytes) or a
`path` column (files the model's process can read): what a served model receives; in process also a list
of paths, a list of (H, W, 3) uint8 images or an (N, H, W, 3) array. Output: anomaly scores, higher = more
anomalous; with the parameter `maps` true (detectors with anomaly maps only), a DataFrame with a `score` and
a `map` column, each map an (H, W) float32 array at its image's size.
"""

import base64
import binascii
import io

import mlflow
import numpy as np
import pandas as pd

from detectors import FeatureCache, Localiser, load_rgb
from detectors.bundle import load_bundle

IMAGE_COLUMN, PATH_COLUMN = "image", "path"
MAPS_PARAM = "maps"


class DetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.features = FeatureCache()
        self.detector = load_bundle(context.artifacts["bundle"], self.features)

    # MLflow reads a DataFrame hint as "no schema to check": in process the model also takes lists and arrays
    def predict(self, context, model_input: pd.DataFrame, params=None):
        wants_maps = bool((params or {}).get(MAPS_PARAM))
        if wants_maps and not isinstance(self.detector, Localiser):
            raise ValueError(f"{MAPS_PARAM}=true, but this model's detector ({type(self.detector).__name__}) "
                             "scores whole images and has no anomaly maps")
        images = as_images(model_input)
        try:
            if not wants_maps:
                return self.detector.anomaly_scores(images)
            scores, maps = _scores_and_maps(self.detector, images)
            return pd.DataFrame({"score": scores, "map": maps})
        finally:
            self.features.clear()  # a served model sees new images all the time: keep no features


def _scores_and_maps(detector: Localiser, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and maps of images of any sizes: each size is one pass."""
    scores, maps = np.empty(len(images)), [None] * len(images)
    by_size = {}
    for index, image in enumerate(images):
        by_size.setdefault(image.shape[:2], []).append(index)
    for indices in by_size.values():
        group_scores, group_maps = detector.scores_and_maps([images[i] for i in indices])
        scores[indices] = group_scores
        for i, image_map in zip(indices, group_maps):
            maps[i] = image_map
    return scores, maps


def as_images(model_input) -> list[np.ndarray]:
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            return [load_rgb(io.BytesIO(_image_bytes(item, row)), name=f"in row {row} of the input")
                    for row, item in enumerate(model_input[IMAGE_COLUMN])]
        if PATH_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs an {IMAGE_COLUMN!r} column (image files, base64-encoded) or a "
                             f"{PATH_COLUMN!r} column, got columns {list(model_input.columns)}")
        model_input = model_input[PATH_COLUMN].tolist()
    if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
        return list(model_input)
    return [item if isinstance(item, np.ndarray) else load_rgb(item) for item in model_input]


def _image_bytes(item, row: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, TypeError, ValueError) as error:
        raise ValueError(f"{IMAGE_COLUMN!r} in row {row} of the input is neither bytes nor base64 text: "
                         f"{error}") from None


mlflow.models.set_model(DetectorModel())
