import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from detectors import DeepKNN, ScoreEnsemble
from selection.registry import CHALLENGER, CHAMPION, register_and_promote


@pytest.fixture
def fitted_detector():
    rng = np.random.default_rng(0)
    normals = [rng.integers(100, 140, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    return DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=2).fit(normals)


def _promote(detector, auroc, digest):
    with mlflow.start_run():
        return register_and_promote("bottle-detector", detector, {"synthetic_auroc": auroc, "dataset_digest": digest})


def test_champion_moves_only_on_a_better_score_on_the_same_synthetic_set(tracking_uri, fitted_detector):
    mlflow.set_experiment("registry")
    first = _promote(fitted_detector, 0.80, "d1")
    assert (first.alias, first.version) == (CHAMPION, "1")
    worse = _promote(fitted_detector, 0.70, "d1")
    assert worse.alias == CHALLENGER and "does not beat" in worse.reason
    better = _promote(fitted_detector, 0.90, "d1")
    assert better.alias == CHAMPION
    other_set = _promote(fitted_detector, 0.99, "d2")
    assert other_set.alias == CHALLENGER and "another synthetic set" in other_set.reason

    client = MlflowClient()
    champion = client.get_model_version_by_alias("bottle-detector", CHAMPION)
    assert str(champion.version) == better.version
    assert champion.tags["synthetic_auroc"] == "0.9" and champion.tags["dataset_digest"] == "d1"
    assert str(client.get_model_version_by_alias("bottle-detector", CHALLENGER).version) == other_set.version


def test_champion_scores_images_like_the_detector(tracking_uri, fitted_detector, tmp_path):
    from PIL import Image

    mlflow.set_experiment("registry")
    _promote(fitted_detector, 0.8, "d1")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))

    model = mlflow.pyfunc.load_model("models:/bottle-detector@champion")
    expected = fitted_detector.anomaly_scores(images)
    np.testing.assert_allclose(model.predict(paths), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict(np.stack(images)), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict(pd.DataFrame({"path": paths})), expected, rtol=1e-6)


def test_a_registered_ensemble_scores_images_like_the_ensemble(tracking_uri, fitted_detector):
    rng = np.random.default_rng(2)
    normals = [rng.integers(90, 150, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    other = DeepKNN(backbone="pixels_32", weights="none", layer="raw", k=2).fit(normals)
    heldout = [rng.integers(90, 150, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    ensemble = ScoreEnsemble.from_heldout_scores([fitted_detector, other],
                                                 [m.anomaly_scores(heldout) for m in (fitted_detector, other)])
    mlflow.set_experiment("registry")
    _promote(ensemble, 0.8, "d1")
    images = np.stack([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)])
    model = mlflow.pyfunc.load_model("models:/bottle-detector@champion")
    np.testing.assert_allclose(model.predict(images), ensemble.anomaly_scores(list(images)), rtol=1e-6)
