import shutil
from pathlib import Path
from urllib.parse import urlparse

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


LABELS = {"cutpaste": np.array([0] * 30 + [1] * 30), "nsa": np.array([0] * 30 + [1] * 30)}


def _scores(separation: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Scores on LABELS' sets whose anomalies sit `separation` standard deviations above the normals."""
    rng = np.random.default_rng(seed)
    return {generator: rng.normal(0, 1, len(labels)) + separation * labels for generator, labels in LABELS.items()}


def _promote(detector, auroc, digest, scores=None, threshold=0.95):
    with mlflow.start_run():
        return register_and_promote("bottle-detector", detector, {"synthetic_auroc": auroc, "dataset_digest": digest},
                                    LABELS, _scores(1.0) if scores is None else scores, threshold)


def test_champion_moves_only_when_confidently_beaten_on_the_same_synthetic_sets(tracking_uri, fitted_detector):
    mlflow.set_experiment("registry")
    first = _promote(fitted_detector, 0.80, "d1")
    assert (first.alias, first.version) == (CHAMPION, "1")
    same = _promote(fitted_detector, 0.80, "d1")  # the same scores: beats the champion in half the resamples
    assert same.alias == CHALLENGER and "does not beat champion v1 with confidence: better in 50%" in same.reason
    # slightly better on average: a naive comparison of AUROCs would promote it, the bootstrap does not
    slightly = _scores(1.0)
    slightly["cutpaste"] = slightly["cutpaste"] + 0.05 * LABELS["cutpaste"]
    assert _promote(fitted_detector, 0.81, "d1", slightly).alias == CHALLENGER
    better = _promote(fitted_detector, 0.95, "d1", _scores(3.0, seed=1))
    assert better.alias == CHAMPION and "beats champion v1 with confidence" in better.reason
    other_set = _promote(fitted_detector, 0.99, "d2", _scores(5.0))
    assert other_set.alias == CHALLENGER and "another synthetic set" in other_set.reason
    anything = _promote(fitted_detector, 0.5, "d1", _scores(0.0, seed=2), threshold=0)
    assert anything.alias == CHAMPION  # a threshold of 0 always takes the new version, as it takes the winner

    client = MlflowClient()
    champion = client.get_model_version_by_alias("bottle-detector", CHAMPION)
    assert str(champion.version) == anything.version and champion.tags["dataset_digest"] == "d1"
    assert "threshold 0%" in champion.tags["promotion"]
    assert str(client.get_model_version_by_alias("bottle-detector", CHALLENGER).version) == other_set.version
    kept = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/{champion.tags['synthetic_scores']}")
    np.testing.assert_allclose(kept["nsa"], _scores(0.0, seed=2)["nsa"])


def test_a_champion_without_kept_scores_is_not_displaced(tracking_uri, fitted_detector):
    mlflow.set_experiment("registry")
    first = _promote(fitted_detector, 0.80, "d1")
    champion = MlflowClient().get_model_version("bottle-detector", first.version)
    shutil.rmtree(Path(urlparse(mlflow.get_run(champion.run_id).info.artifact_uri).path) / "synthetic_scores")
    second = _promote(fitted_detector, 0.99, "d1", _scores(5.0))
    assert second.alias == CHALLENGER and "has no kept synthetic scores" in second.reason


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


def test_a_champion_registered_before_the_scores_tag_is_compared_on_the_scores_kept_by_its_version(
        tracking_uri, fitted_detector):
    mlflow.set_experiment("registry")
    first = _promote(fitted_detector, 0.80, "d1")
    client = MlflowClient()
    champion = client.get_model_version("bottle-detector", first.version)
    artifacts = Path(urlparse(mlflow.get_run(champion.run_id).info.artifact_uri).path)
    (artifacts / champion.tags["synthetic_scores"]).rename(artifacts / "synthetic_scores" / f"v{first.version}.json")
    client.delete_model_version_tag("bottle-detector", first.version, "synthetic_scores")  # how older versions are
    assert _promote(fitted_detector, 0.99, "d1", _scores(5.0)).alias == CHAMPION


def test_a_promotion_raced_by_another_decides_again_against_the_champion_that_won(tracking_uri, fitted_detector,
                                                                                   monkeypatch):
    import threading

    mlflow.set_experiment("registry")
    _promote(fitted_detector, 0.80, "d1")  # v1, the champion both decide against at first
    register, raced = mlflow.register_model, []

    def register_while_another_promotes(*args, **kwargs):
        version = register(*args, **kwargs)
        if not raced:  # the other promotion runs to its end between this one's registration and its alias
            raced.append("started")
            other = threading.Thread(target=lambda: raced.append(_promote(fitted_detector, 0.99, "d1", _scores(5.0, seed=3))))
            other.start()
            other.join()
        return version

    monkeypatch.setattr(mlflow, "register_model", register_while_another_promotes)
    slower = _promote(fitted_detector, 0.95, "d1", _scores(3.0, seed=1))  # beats v1, not the raced v3
    faster = raced[1]
    assert (slower.version, faster.version) == ("2", "3") and faster.alias == CHAMPION
    assert slower.alias == CHALLENGER and "does not beat champion v3" in slower.reason
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("bottle-detector", CHAMPION).version) == "3"
    assert client.get_model_version("bottle-detector", "2").tags["promotion"] == slower.reason
