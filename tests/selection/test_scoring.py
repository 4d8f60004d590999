import itertools

import numpy as np
import pytest
from scipy.stats import kendalltau

from selection.scoring import OneClassError, auroc, compare_rankings


def _auroc_by_pair_counting(labels, scores):
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding creates ties
    assert auroc(labels, scores) == pytest.approx(_auroc_by_pair_counting(labels, scores))


def test_auroc_of_a_perfect_and_a_reversed_detector():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_one_class_set_is_refused_with_the_set_named():
    with pytest.raises(OneClassError, match="my set has only class \\[0\\]"):
        auroc([0, 0, 0], [0.1, 0.2, 0.3], "my set")


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        auroc([0, 1], [0.1, np.nan])


def test_ranking_comparison_against_scipy_and_by_hand():
    synthetic = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    real = {"a": 0.85, "b": 0.95, "c": 0.6, "d": 0.7}
    comparison = compare_rankings(synthetic, real, baseline="c")
    names = sorted(synthetic)
    expected_tau, expected_p = kendalltau([synthetic[n] for n in names], [real[n] for n in names])
    assert comparison.tau == pytest.approx(expected_tau)
    assert comparison.tau == pytest.approx((4 - 2) / 6)  # 4 concordant, 2 discordant pairs
    assert comparison.p_value == pytest.approx(expected_p)
    assert comparison.pick == "a" and comparison.oracle == "b"
    assert comparison.regret == pytest.approx(0.10)
    assert comparison.baseline_regret == pytest.approx(0.35)
    assert comparison.pretrained_tau is None


def test_tau_among_pretrained_candidates_ignores_the_controls():
    synthetic = {"a": 0.9, "b": 0.8, "c": 0.7, "control": 0.1}
    real = {"a": 0.7, "b": 0.8, "c": 0.9, "control": 0.2}
    comparison = compare_rankings(synthetic, real, pretrained={"a", "b", "c"})
    assert comparison.pretrained_tau == pytest.approx(-1.0)  # the three pretrained are in reverse order
    assert comparison.tau == pytest.approx(0.0)  # 3 concordant pairs with the control, 3 discordant among the rest


def test_ranking_comparison_needs_the_same_candidates():
    with pytest.raises(ValueError, match="same candidates"):
        compare_rankings({"a": 0.5, "b": 0.6}, {"a": 0.5, "c": 0.6})
