import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from selection.confidence import _auroc_rows, bootstrap_beats, decide


def _set(seed=0, n_normals=30, n_anomalies=20):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_normals, int), np.ones(n_anomalies, int)]
    perfect = labels + rng.random(len(labels)) * 0.5  # separates the classes
    noise = rng.random(len(labels))  # does not
    slightly_better = rng.random(len(labels)) + 0.1 * labels  # a little better, with its own noise
    return labels, perfect, noise, slightly_better


def test_auroc_of_each_row_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, (20, 12)).astype(float)  # many ties
    labels = np.r_[np.zeros(7, int), np.ones(5, int)]
    expected = [roc_auc_score(labels, row) for row in scores]
    np.testing.assert_allclose(_auroc_rows(scores, n_normals=7), expected)


def test_bootstrap_probabilities():
    labels, perfect, noise, slightly_better = _set()
    sets = {"g": labels}
    assert bootstrap_beats(sets, {"g": perfect}, {"g": noise}) == 1.0
    assert bootstrap_beats(sets, {"g": noise}, {"g": noise}) == 0.5  # ties count half
    forward = bootstrap_beats(sets, {"g": slightly_better}, {"g": noise}, seed=3)
    backward = bootstrap_beats(sets, {"g": noise}, {"g": slightly_better}, seed=3)
    assert forward + backward == pytest.approx(1.0) and 0.5 < forward < 1.0


def test_several_sets_are_combined_by_their_mean_auroc():
    labels, perfect, noise, _ = _set()
    sets = {"a": labels, "b": labels}
    # first wins set a by a lot and loses set b by a little: its mean AUROC is higher in every resample
    assert bootstrap_beats(sets, {"a": perfect, "b": noise}, {"a": noise, "b": noise + 0.01 * labels}) == 1.0


def test_the_winner_overrules_the_prior_only_when_confident():
    labels, perfect, noise, slightly_better = _set()
    sets = {"g": labels}
    scores = {"strong": {"g": perfect}, "weak": {"g": slightly_better}, "prior": {"g": noise}}
    confident = decide(["strong", "weak", "prior"], "prior", sets, scores)
    assert confident.chosen == "strong" and confident.confidence == 1.0 and "overrules" in confident.reason
    unsure = decide(["weak", "strong", "prior"], "prior", sets, scores)  # a ranking the evidence barely supports
    assert unsure.chosen == "prior" and unsure.confidence < 0.95 and "does not overrule" in unsure.reason
    naive = decide(["weak", "strong", "prior"], "prior", sets, scores, threshold=0.0)
    assert naive.chosen == "weak"
    same = decide(["prior", "weak"], "prior", sets, scores)
    assert same.chosen == "prior" and same.confidence is None
    assert decide(["weak", "prior"], None, sets, scores).chosen == "weak"
    with pytest.raises(ValueError, match="threshold must lie in"):
        decide(["weak"], None, sets, scores, threshold=1.5)
