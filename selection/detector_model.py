"""The MLflow pyfunc wrapper of a fitted detector (a deep kNN or a score ensemble), logged as code (MLflow's
models-from-code) so that loading a registered model runs this file instead of unpickling an object.

Input: a DataFrame with a `path` column (what a served model receives); in process also a list of paths,
a list of (H, W, 3) uint8 images or an (N, H, W, 3) array. Output: anomaly scores, higher = more anomalous.
"""

import mlflow
import numpy as np
import pandas as pd

from detectors import load_detector, load_rgb


class DetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.detector = load_detector(context.artifacts["detector"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self.detector.anomaly_scores(as_images(model_input))


def as_images(model_input) -> list[np.ndarray]:
    if isinstance(model_input, pd.DataFrame):
        column = "path" if "path" in model_input.columns else model_input.columns[0]
        model_input = model_input[column].tolist()
    if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
        return list(model_input)
    return [item if isinstance(item, np.ndarray) else load_rgb(item) for item in model_input]


mlflow.models.set_model(DetectorModel())
