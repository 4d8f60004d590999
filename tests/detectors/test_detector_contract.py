"""The contract every registered detector kind passes. A new kind joins by adding a fast configuration here.

Single detectors are built from their hyper-parameters alone; the score ensemble is a combination of fitted
members (its standardisation comes from their scores on held-out normals), so the parts about building and
fitting from hyper-parameters do not apply to it and it is built fitted."""

import json

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from detectors import ClipDetector, DeepKNN, FeatureCache, Localiser, PatchCore, ScoreEnsemble, VLAD, load_detector
from detectors.interface import list_formats
from tiny_models import register_tiny_clip

SINGLE = {  # format -> hyper-parameters of a fast configuration
    "deep_knn/1": {"backbone": "pixels_16", "weights": "none", "layer": "raw", "k": 2},
    "patchcore/1": {"backbone": "mobilenet_v2", "weights": "imagenet", "coreset_ratio": 0.25},
    # a toy CLIP with random weights: its text scores mean nothing, so the visual memory carries the contract
    "clip/1": {"backbone": f"clip:{register_tiny_clip()}", "weights": "random", "normal_prompts": ["a photo of a thing."],
               "anomalous_prompts": ["a photo of a damaged thing."], "few_shot": True, "visual_weight": 0.9},
    "vlad/1": {"backbone": "mobilenet_v2", "weights": "imagenet", "layers": ["mid", "last"], "epochs": 2, "memory": 500},
}
COMBINED = {"score_ensemble/1"}
LOCALISING = {"patchcore/1", "clip/1", "vlad/1"}  # the kinds with anomaly maps
SIZE = 48


def _normals(n, seed):
    """Smooth gradients with mild noise: what "normal" looks like here."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 180, SIZE)[None, :, None]
    return [np.clip(ramp + rng.normal(0, 4, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _with_defect(images):
    """The same images with a bright quarter-size square pasted in."""
    broken = [image.copy() for image in images]
    for image in broken:
        image[8:32, 10:34] = 255
    return broken


def _build(name: str, features: FeatureCache):
    if name in SINGLE:
        return _detector_class(name)(**SINGLE[name], features=features)
    members = [DeepKNN(**SINGLE["deep_knn/1"], features=features).fit(_normals(6, 1)),
               DeepKNN(**{**SINGLE["deep_knn/1"], "backbone": "pixels_32"}, features=features).fit(_normals(6, 1))]
    heldout = _normals(4, 2)
    return ScoreEnsemble.from_heldout_scores(members, [m.anomaly_scores(heldout) for m in members], weights=[1, 3])


def _detector_class(name: str):
    return {"deep_knn/1": DeepKNN, "patchcore/1": PatchCore, "clip/1": ClipDetector, "vlad/1": VLAD}[name]


def test_every_registered_kind_is_under_contract():
    assert set(list_formats()) == set(SINGLE) | COMBINED


@pytest.fixture(params=sorted(set(SINGLE) | COMBINED))
def kind(request):
    return request.param


@pytest.fixture
def fitted(kind):
    detector = _build(kind, FeatureCache())
    return detector.fit(_normals(6, 1)) if kind in SINGLE else detector


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_built_from_hyper_parameters_alone_which_round_trip(name):
    detector = _build(name, FeatureCache())
    params = detector.get_params()
    assert params == SINGLE[name] | params and json.loads(json.dumps(params)) == params
    assert type(detector)(**params).get_params() == params
    assert "features" not in params


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_unfitted_it_refuses_clearly_and_fit_returns_itself(name):
    detector = _build(name, FeatureCache())
    with pytest.raises(NotFittedError, match="fit"):
        detector.anomaly_scores(_normals(1, 3))
    if isinstance(detector, Localiser):
        with pytest.raises(NotFittedError, match="fit"):
            detector.anomaly_maps(_normals(1, 3))
    assert detector.fit(_normals(6, 1)) is detector


def test_same_input_same_scores(kind, fitted):
    images = _normals(3, 4) + _with_defect(_normals(2, 5))
    first = fitted.anomaly_scores(images)
    assert first.shape == (5,) and np.isfinite(first).all()
    np.testing.assert_array_equal(fitted.anomaly_scores(images), first)
    np.testing.assert_array_equal(_build(kind, FeatureCache()).fit(_normals(6, 1)).anomaly_scores(images)
                                  if kind in SINGLE else fitted.anomaly_scores(list(images)), first)


def test_higher_means_more_anomalous(fitted):
    normals, defects = _normals(4, 6), _with_defect(_normals(4, 7))
    assert fitted.anomaly_scores(defects).min() > fitted.anomaly_scores(normals).max()


def test_saved_and_loaded_it_scores_bit_for_bit(kind, fitted, tmp_path):
    images = _normals(2, 8) + _with_defect(_normals(2, 9))
    fitted.save(tmp_path / "saved")
    loaded = load_detector(tmp_path / "saved")
    assert type(loaded) is type(fitted)
    np.testing.assert_array_equal(loaded.anomaly_scores(images), fitted.anomaly_scores(images))
    if isinstance(fitted, Localiser):
        np.testing.assert_array_equal(loaded.anomaly_maps(images), fitted.anomaly_maps(images))
    assert loaded.backbone_keys == fitted.backbone_keys


def test_exactly_the_localising_kinds_have_maps(kind, fitted):
    assert isinstance(fitted, Localiser) == (kind in LOCALISING)


@pytest.mark.parametrize("name", sorted(LOCALISING))
def test_maps_are_at_image_size_and_agree_with_the_scores(name):
    detector = _build(name, FeatureCache()).fit(_normals(6, 1))
    images = _with_defect(_normals(2, 10))
    maps = detector.anomaly_maps(images)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps[:, 8:32, 10:34].mean() > maps.mean()
    scores, same_maps = detector.scores_and_maps(images)
    np.testing.assert_array_equal(scores, detector.anomaly_scores(images))
    np.testing.assert_array_equal(same_maps, maps)


def test_it_names_the_backbones_it_needs(fitted):
    assert fitted.backbone_keys and all(len(key) == 2 for key in fitted.backbone_keys)
