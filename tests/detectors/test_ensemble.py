import json

import numpy as np
import pytest

from detectors import DeepKNN, FeatureCache, ScoreEnsemble, load_detector


def _images(n, seed=0, size=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(60, 200, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _members(features):
    return [DeepKNN(backbone=b, weights="none", layer="raw", k=2, features=features).fit(_images(12))
            for b in ("pixels_16", "pixels_32")]


def test_scores_are_the_mean_of_each_members_standardised_scores():
    features = FeatureCache()
    members = _members(features)
    heldout, queries = _images(6, seed=1), _images(5, seed=2)
    ensemble = ScoreEnsemble.from_heldout_scores(members, [m.anomaly_scores(heldout) for m in members])
    expected = np.mean([(m.anomaly_scores(queries) - m.anomaly_scores(heldout).mean()) / m.anomaly_scores(heldout).std()
                        for m in members], axis=0)
    np.testing.assert_allclose(ensemble.anomaly_scores(queries), expected)
    standardised_heldout = ensemble.anomaly_scores(heldout)
    assert abs(standardised_heldout.mean()) < 1e-9  # each member centred on the held-out normals


def test_weights_set_each_members_share_and_survive_saving(tmp_path):
    features = FeatureCache()
    members = _members(features)
    heldout, queries = _images(6, seed=1), _images(5, seed=2)
    heldout_scores = [m.anomaly_scores(heldout) for m in members]
    ensemble = ScoreEnsemble.from_heldout_scores(members, heldout_scores, weights=[1, 3])
    standardised = [(m.anomaly_scores(queries) - h.mean()) / h.std() for m, h in zip(members, heldout_scores)]
    np.testing.assert_allclose(ensemble.anomaly_scores(queries), 0.25 * standardised[0] + 0.75 * standardised[1])
    ensemble.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    np.testing.assert_allclose(loaded.weights, [0.25, 0.75])
    np.testing.assert_allclose(loaded.anomaly_scores(queries), ensemble.anomaly_scores(queries))


def test_an_ensemble_saved_without_weights_loads_with_equal_weights(tmp_path):
    features = FeatureCache()
    members = _members(features)
    ScoreEnsemble.from_heldout_scores(members, [np.array([0.0, 2.0]), np.array([1.0, 5.0])]).save(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "ensemble.json").read_text())
    del spec["weights"]
    (tmp_path / "m" / "ensemble.json").write_text(json.dumps(spec))
    np.testing.assert_allclose(load_detector(tmp_path / "m").weights, [0.5, 0.5])


def test_a_member_on_a_larger_scale_does_not_dominate():
    scores = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0, 0.0]) * 1e6]
    ensemble = ScoreEnsemble.from_heldout_scores([object(), object()], scores)
    np.testing.assert_allclose(ensemble.combine(scores), 0, atol=1e-12)  # opposite rankings cancel exactly


def test_save_and_load_round_trip(tmp_path):
    features = FeatureCache()
    members = _members(features)
    heldout, queries = _images(6, seed=1), _images(5, seed=2)
    ensemble = ScoreEnsemble.from_heldout_scores(members, [m.anomaly_scores(heldout) for m in members])
    ensemble.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert isinstance(loaded, ScoreEnsemble) and len(loaded.members) == 2
    np.testing.assert_allclose(loaded.anomaly_scores(queries), ensemble.anomaly_scores(queries))
    members[0].save(tmp_path / "single")
    assert isinstance(load_detector(tmp_path / "single"), DeepKNN)


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="at least one member"):
        ScoreEnsemble([], [], [])
    with pytest.raises(ValueError, match="at least two held-out"):
        ScoreEnsemble.from_heldout_scores([object()], [np.array([1.0])])
    with pytest.raises(ValueError, match="weights must be positive"):
        ScoreEnsemble.from_heldout_scores([object(), object()], [np.array([1.0, 2.0])] * 2, weights=[1, 0])
    with pytest.raises(ValueError, match="one weight per member"):
        ScoreEnsemble([object()], [0.0], [1.0], weights=[1, 2])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ensemble.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt saved detector .* ensemble.json names no format"):
        load_detector(tmp_path / "broken")
