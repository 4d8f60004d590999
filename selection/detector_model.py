"""The MLflow pyfunc wrapper of a fitted detector (a deep kNN or a score ensemble), logged as code (MLflow's
models-from-code) so that loading a registered model runs this file instead of unpickling an object. Its
artefact is a detector bundle (detectors/bundle.py): the backbones' weights travel with the model.

Input: a DataFrame with an `image` column (image files, base64-encoded as JSON carries them, or bytes) or a
`path` column (files the model's process can read): what a served model receives; in process also a list
of paths, a list of (H, W, 3) uint8 images or an (N, H, W, 3) array. Output: anomaly scores, higher = more
anomalous.
"""

import base64
import binascii
import io

import mlflow
import numpy as np
import pandas as pd

from detectors import FeatureCache, load_rgb
from detectors.bundle import load_bundle

IMAGE_COLUMN, PATH_COLUMN = "image", "path"


class DetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.features = FeatureCache()
        self.detector = load_bundle(context.artifacts["bundle"], self.features)

    # MLflow reads a DataFrame hint as "no schema to check": in process the model also takes lists and arrays
    def predict(self, context, model_input: pd.DataFrame, params=None):
        try:
            return self.detector.anomaly_scores(as_images(model_input))
        finally:
            self.features.clear()  # a served model sees new images all the time: keep no features


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
