import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from selection.confidence import (CALIBRATION_FILE, Calibration, _auroc_rows, bootstrap_beats, calibration_key,
                                  decide, every_family_beats, load_calibration)


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


def test_every_family_must_be_confident_on_its_own():
    labels, perfect, noise, _ = _set()
    sets = {"a": labels, "b": labels}
    first, second = {"a": perfect, "b": noise}, {"a": noise, "b": noise + 0.01 * labels}
    assert bootstrap_beats(sets, first, second) == 1.0  # the mean AUROC is carried by family a
    assert every_family_beats(sets, first, second) < 0.5  # family b disagrees


def test_calibration_reads_the_highest_level_reached(tmp_path):
    calibration = Calibration(("cutpaste",), ((0.5, 10, 3), (0.9, 6, 2), (0.99, 4, 1)), "test")
    assert calibration.calibrated(0.95) == (pytest.approx(3 / 8), 6)
    assert calibration.calibrated(1.0) == (pytest.approx(2 / 6), 4)
    assert calibration.calibrated(0.3) == (0.5, 0)  # no runs: no information either way
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"cutpaste,perlin against ensemble/last": {"levels": [[0.5, 2, 1]],
                                                                          "measured_on": "2 runs"}}))
    loaded = load_calibration(["perlin", "cutpaste"], "ensemble/last", path)
    assert loaded.levels == ((0.5, 2, 1),) and loaded.measured_on == "2 runs"
    assert load_calibration(["cutpaste"], "ensemble/last", path) is None  # other generators
    assert load_calibration(["cutpaste", "perlin"], "largest model", path) is None  # another prior
    assert load_calibration(["cutpaste", "perlin"], None, path) is None  # a prior the user named
    assert load_calibration(["cutpaste"], "ensemble/last", tmp_path / "absent.json") is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt calibration file .*calibration.json"):
        load_calibration(["cutpaste", "perlin"], "ensemble/last", path)


def test_the_shipped_calibration_was_measured_for_the_default_generators_and_prior():
    from selection.candidates import ensemble_candidate
    from selection.pipeline import SelectionConfig, prior_kind

    config = SelectionConfig()
    kind = prior_kind(config, ensemble_candidate(config.ensemble, config.candidates()))
    assert load_calibration(config.generators, kind) is not None, (
        f"{CALIBRATION_FILE.name} has no entry {calibration_key(config.generators, kind)!r}: re-measure it with "
        "benchmarks/selection_quality.py --write-calibration")


def test_a_calibrated_confidence_decides_where_there_is_one():
    labels, perfect, noise, _ = _set()
    sets = {"g": labels}
    scores = {"strong": {"g": perfect}, "prior": {"g": noise}}
    sceptical = Calibration(("g",), ((0.5, 20, 9),), "benchmark")  # such winners were right 9 times in 20
    decision = decide(["strong", "prior"], "prior", sets, scores, calibration=sceptical)
    assert decision.confidence == 1.0 and decision.calibrated_confidence == pytest.approx(10 / 22)
    assert decision.chosen == "prior" and "calibrated" in decision.reason and "20 benchmark runs" in decision.reason
    trusting = Calibration(("g",), ((0.5, 100, 99),), "benchmark")
    assert decide(["strong", "prior"], "prior", sets, scores, calibration=trusting).chosen == "strong"


def test_a_calibration_measured_on_the_knn_pool_does_not_apply_to_another_pool():
    from dataclasses import replace

    from selection.candidates import ensemble_candidate
    from selection.pipeline import SelectionConfig, prior_kind

    config = replace(SelectionConfig(), detectors=("knn", "patchcore"))
    kind = prior_kind(config, ensemble_candidate(config.ensemble, config.candidates()))
    assert kind == "ensemble/last among knn+patchcore"
    knn_only = replace(config, detectors=("knn",))
    assert prior_kind(knn_only, ensemble_candidate(knn_only.ensemble, knn_only.candidates())) == "ensemble/last"
    assert load_calibration(config.generators, kind) != load_calibration(config.generators, "ensemble/last")
    assert load_calibration(config.generators, "ensemble/last among knn+clip") is None  # never measured
