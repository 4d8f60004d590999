"""Detector kinds as candidates: the registry, PatchCore's candidates and space, and the pixel evidence that
candidates with anomaly maps are judged on."""

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import FixedTrial
from PIL import Image

from detectors import FeatureCache, PatchCore
from selection.candidates import CandidatePool, default_candidates, get_kind, list_kinds
from selection.evidence import _pixel_columns, pixel_truth
from selection.kinds.patchcore import PatchCoreCandidate
from selection.pipeline import pixel_metrics_note
from selection.search_space import SpaceBounds, get_search_space

POOL = CandidatePool(backbones=("mobilenet_v2", "efficientnet_lite0"), layers=("last", "mid"))


def test_every_kind_is_registered_and_an_unknown_one_is_named():
    assert list_kinds() == ["clip", "knn", "patchcore", "vlad"]
    with pytest.raises(ValueError, match="unknown detector kind 'svdd'; known: clip, knn, patchcore, vlad"):
        get_kind("svdd")


def test_patchcore_defaults_are_the_standard_configuration_per_backbone_with_one_random_twin_as_control():
    candidates = default_candidates(POOL, ("patchcore",))
    assert [c.name for c in candidates] == [
        "patchcore/mobilenet_v2/imagenet/early+mid/c0.1/p3/k1", "patchcore/efficientnet_lite0/imagenet/early+mid/c0.1/p3/k1",
        "patchcore/mobilenet_v2/random/early+mid/c0.1/p3/k1"]
    assert [c.is_control for c in candidates] == [False, False, True]
    assert all(c.is_standard for c in candidates)
    assert not PatchCoreCandidate("mobilenet_v2", k=3).is_standard
    assert len(default_candidates(CandidatePool(POOL.backbones, POOL.layers, controls=False), ("patchcore",))) == 2
    both = default_candidates(POOL, ("knn", "patchcore"))
    assert {c.name.split("/")[0] for c in both} == {"knn", "patchcore"}


def test_a_patchcore_candidate_builds_the_detector_its_name_and_params_describe():
    candidate = PatchCoreCandidate("mobilenet_v2", layers=("mid",), coreset_ratio=0.25, neighbourhood=5, k=3,
                                   reweight=True)
    assert candidate.name == "patchcore/mobilenet_v2/imagenet/mid/c0.25/p5/k3/reweight"
    assert candidate.params == {"detector": "patchcore", "backbone": "mobilenet_v2", "weights": "imagenet",
                                "layers": "mid", "coreset_ratio": 0.25, "neighbourhood": 5, "k": 3, "reweight": True}
    detector = candidate.detector(FeatureCache())
    assert isinstance(detector, PatchCore)
    assert detector.get_params() | {"layers": tuple(detector.layers)} == {
        "backbone": "mobilenet_v2", "weights": "imagenet", "layers": ("mid",), "coreset_ratio": 0.25,
        "neighbourhood": 5, "k": 3, "dim": None, "reweight": True, "seed": 0}
    assert candidate.backbone_keys == (("mobilenet_v2", "imagenet"),)


@pytest.mark.parametrize("candidate, message", [
    (PatchCoreCandidate("mobilenet_v2", layers=("top",)), "layers must be distinct layers of 'mobilenet_v2'"),
    (PatchCoreCandidate("resnet_nonexistent"), "unknown backbone 'resnet_nonexistent'"),
    (PatchCoreCandidate("mobilenet_v2", neighbourhood=2), "neighbourhood must be an odd positive integer"),
])
def test_a_bad_patchcore_candidate_fails_its_check_without_building_a_backbone(candidate, message):
    features = FeatureCache()
    with pytest.raises(ValueError, match=message):
        candidate.check(features)
    assert not features._backbones  # nothing was built


def test_the_patchcore_space_draws_valid_candidates():
    space = get_search_space("patchcore")
    bounds = SpaceBounds(("mobilenet_v2", "efficientnet_lite0"), ("last", "mid"), bank_size=5)
    fixed = space(FixedTrial({"backbone": "efficientnet_lite0", "layers": "mid", "coreset_ratio": 0.01,
                              "neighbourhood": 1, "k": 2, "reweight": True}), bounds)
    assert fixed.name == "patchcore/efficientnet_lite0/imagenet/mid/c0.01/p1/k2/reweight"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space(study.ask(), bounds) for _ in range(60)]
    for candidate in drawn:
        candidate.check(FeatureCache())
    assert len({c.name for c in drawn}) > 30 and not any(c.is_control for c in drawn)


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_pixel_truth_marks_the_anomalies_masks_and_nothing_of_the_normals(tmp_path):
    images = [np.zeros((4, 6, 3), np.uint8)] * 3
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 255
    mask[0, 0] = 100  # below one half: not anomalous
    truth = pixel_truth(images, [0, 1, 1], [None, _png(tmp_path / "a.png", mask), _png(tmp_path / "b.png", 255 - mask)])
    assert truth.dtype == bool and truth.shape == (3, 4, 6)
    assert not truth[0].any()
    np.testing.assert_array_equal(truth[1], mask >= 128)
    np.testing.assert_array_equal(truth[2], 255 - mask >= 128)


def test_pixel_truth_is_undefined_without_every_mask_or_one_image_size(tmp_path):
    mask = _png(tmp_path / "m.png", np.full((4, 6), 255, np.uint8))
    same = [np.zeros((4, 6, 3), np.uint8)] * 2
    assert pixel_truth(same, [0, 1], [None, None]) is None  # DiffStyle: labels only
    assert pixel_truth([same[0], np.zeros((5, 6, 3), np.uint8)], [0, 1], [None, mask]) is None
    with pytest.raises(ValueError, match="mask .* is 6x4 px, its image 8x4 px"):
        pixel_truth([np.zeros((4, 8, 3), np.uint8)] * 2, [0, 1], [None, mask])


def test_pixel_columns_average_over_the_sets_that_have_them():
    columns = _pixel_columns({"synthetic/cutpaste": {"pixel_auroc": 0.9, "aupro": 0.6},
                              "synthetic/diffstyle": {}, "synthetic/nsa": {"pixel_auroc": 0.7, "aupro": 0.4},
                              "real": {"pixel_auroc": 0.95, "aupro": 0.8}})
    assert columns == pytest.approx({
        "synthetic_pixel_auroc/cutpaste": 0.9, "synthetic_pixel_auroc/nsa": 0.7, "synthetic_pixel_auroc": 0.8,
        "synthetic_aupro/cutpaste": 0.6, "synthetic_aupro/nsa": 0.4, "synthetic_aupro": 0.5,
        "real_pixel_auroc": 0.95, "real_aupro": 0.8})
    assert _pixel_columns({"synthetic/diffstyle": {}}) == {}


def test_the_report_says_which_candidates_are_ranked_on_image_metrics_only():
    board = pd.DataFrame({"candidate": ["patchcore/a", "knn/b", "knn/c"],
                          "synthetic_pixel_auroc/cutpaste": [0.9, np.nan, np.nan],
                          "synthetic_pixel_auroc": [0.9, np.nan, np.nan], "real_pixel_auroc": [0.95, np.nan, np.nan]})
    assert pixel_metrics_note(board) == ("ranked on image AUROC; pixel metrics (P-AUROC, AUPRO) on cutpaste, real "
                                         "for the 1 candidates with anomaly maps; the other 2 (no maps) have image "
                                         "metrics only")
    assert "no candidate has both" in pixel_metrics_note(board[["candidate"]])


def test_the_standard_ensemble_joins_each_familys_standard_configuration():
    from selection.candidates import ensemble_candidate

    candidates = default_candidates(POOL, ("knn", "patchcore"))
    standard = ensemble_candidate("standard", candidates)
    assert standard.name == "ensemble/standard-4"
    assert [m.name for m in standard.members] == [
        "knn/mobilenet_v2/imagenet/last/avg/k3", "knn/efficientnet_lite0/imagenet/last/avg/k3",
        "patchcore/mobilenet_v2/imagenet/early+mid/c0.1/p3/k1", "patchcore/efficientnet_lite0/imagenet/early+mid/c0.1/p3/k1"]
    assert [m.name for m in ensemble_candidate("last", candidates).members] == [m.name for m in standard.members[:2]]
    assert len(ensemble_candidate("pretrained", candidates).members) == 6  # kNN at both layers and PatchCore


def test_the_largest_model_among_families_on_one_backbone_is_the_first_listed_kinds_standard():
    from selection.candidates import largest_pretrained

    features = FeatureCache()
    for kinds in (("knn", "patchcore"), ("patchcore", "knn")):
        largest = largest_pretrained(default_candidates(POOL, kinds), features)
        assert largest.is_standard and largest.backbone_keys == (("efficientnet_lite0", "imagenet"),)
        assert largest.name.startswith(kinds[0] + "/")
