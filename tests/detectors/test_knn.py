import json

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from detectors import DeepKNN, FeatureCache, scores_from_features
from detectors.knn import normalize_features


def _images(n, seed=0, low=0, high=256, size=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_scores_are_sums_of_squared_distances_to_the_k_nearest():
    bank = np.array([[0, 0], [1, 0], [0, 2], [3, 3]], dtype=np.float32)
    queries = np.array([[0, 0], [1, 1], [4, 4]], dtype=np.float32)
    # (0,0): squared distances 0, 1, 4, 18 -> 0 + 1
    # (1,1): 2, 1, 2, 8 -> 1 + 2
    # (4,4): 32, 25, 20, 2 -> 2 + 20
    np.testing.assert_allclose(scores_from_features(bank, queries, k=2), [1, 3, 22])


@pytest.mark.parametrize("k", [0, 5, 2.0])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k"):
        scores_from_features(np.zeros((4, 2)), np.zeros((1, 2)), k=k)


def test_params_exclude_the_shared_cache():
    detector = DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=2, features=FeatureCache())
    assert detector.get_params() == {"backbone": "pixels_16", "weights": "none", "layer": "raw",
                                     "pooling": "avg", "k": 2, "normalize": "none"}


def test_l2_normalisation_compares_feature_directions_only():
    vectors = np.array([[3, 4], [0, 2], [0, 0]], dtype=np.float32)
    np.testing.assert_allclose(normalize_features(vectors, "l2"), [[0.6, 0.8], [0, 1], [0, 0]])
    assert normalize_features(vectors, "none") is vectors
    with pytest.raises(ValueError, match="unknown feature normalisation 'l1'"):
        DeepKNN(normalize="l1")


def test_an_l2_detector_ignores_brightness_scaling_of_raw_pixels():
    bank = _images(5, seed=1, low=40, high=120)
    brighter = [(image * 2).astype(np.uint8) for image in bank]  # every pixel value exactly doubled
    plain = DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=1).fit(bank)
    directions = DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=1, normalize="l2").fit(bank)
    assert plain.anomaly_scores(brighter).min() > 1.0
    np.testing.assert_allclose(directions.anomaly_scores(brighter), 0, atol=1e-4)  # resampling rounding


def test_unfitted_detector_refuses_to_score_or_save(tmp_path):
    detector = DeepKNN(backbone="pixels_16", weights="none", layer="raw")
    with pytest.raises(NotFittedError, match="fit"):
        detector.anomaly_scores(_images(1))
    with pytest.raises(NotFittedError):
        detector.save(tmp_path / "detector")


def test_k_larger_than_the_bank_fails_at_fit():
    with pytest.raises(ValueError, match="k=3 .* got 2"):
        DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=3).fit(_images(2))


def test_outliers_score_higher_than_normals():
    normals = _images(8, seed=0, low=100, high=140)
    detector = DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=2).fit(normals)
    assert detector.bank_.shape == (8, 16 * 16 * 3)
    scores = detector.anomaly_scores(_images(3, seed=1, low=100, high=140) + _images(3, seed=2, low=0, high=40))
    assert scores[:3].max() < scores[3:].min()


def test_scores_match_the_pure_function_on_cached_features():
    cache = FeatureCache()
    normals, queries = _images(5, seed=0), _images(3, seed=1)
    detector = DeepKNN(backbone="pixels_32", weights="none", layer="raw", pooling="max", k=3, features=cache)
    scores = detector.fit(normals).anomaly_scores(queries)
    expected = scores_from_features(cache.features("pixels_32", "none", "raw", "max", normals),
                                    cache.features("pixels_32", "none", "raw", "max", queries), k=3)
    np.testing.assert_array_equal(scores, expected)


def test_save_and_load_give_identical_scores(tmp_path):
    detector = DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=2).fit(_images(6))
    detector.save(tmp_path / "detector")
    restored = DeepKNN.load(tmp_path / "detector")
    assert restored.get_params() == detector.get_params()
    np.testing.assert_array_equal(restored.bank_, detector.bank_)
    queries = _images(4, seed=3)
    np.testing.assert_array_equal(restored.anomaly_scores(queries), detector.anomaly_scores(queries))


def test_loading_a_missing_or_corrupt_directory_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DeepKNN.load(tmp_path / "nowhere")

    DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=2).fit(_images(3)).save(tmp_path / "d")
    (tmp_path / "d" / "params.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        DeepKNN.load(tmp_path / "d")

    (tmp_path / "d" / "params.json").write_text(json.dumps({"format": "deep_knn/1", "colour": "red"}))
    with pytest.raises(ValueError, match="corrupt"):
        DeepKNN.load(tmp_path / "d")

    DeepKNN(backbone="pixels_16", weights="none", layer="raw", k=2).fit(_images(3)).save(tmp_path / "d")
    (tmp_path / "d" / "bank.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        DeepKNN.load(tmp_path / "d")
