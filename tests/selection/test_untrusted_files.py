"""Nothing loaded from a store can run code. A pickle that would create a file when unpickled is planted where
an artefact is expected: a feature-cache entry, a coreset, a DiffStyle inversion (each then treated as
damaged and computed again), a saved detector's bank, text features or trained weights, a backbone's
weights, a registered model's artefacts (each refused with a short error). The file is never created."""

import pickle
import warnings

import mlflow
import numpy as np
import pytest

from detectors import VLAD, ClipDetector, DeepKNN, FeatureCache
from detectors.bundle import load_bundle, save_bundle
from detectors.patchcore import cached_coreset
from tiny_models import register_tiny_clip


class _Payload:
    """Unpickling this calls open(sentinel, "w"): the file appears only if something unpickled it."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return open, (self.sentinel, "w")


def _plant(path, sentinel, kind: str) -> None:
    """A pickle at `path`: a bare one, or wrapped as NumPy writes object arrays (.npy or .npz)."""
    payload = np.array([_Payload(sentinel)], dtype=object)
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(sentinel)))
    elif kind == "npy":
        with open(path, "wb") as file:
            np.save(file, payload, allow_pickle=True)
    else:
        with open(path, "wb") as file:
            np.savez(file, **{"last.avg": payload})


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("kind", ["pickle", "npz"])
def test_a_planted_feature_cache_entry_is_computed_again(tmp_path, kind):
    images = _images(2)
    expected = FeatureCache(directory=tmp_path / "features").features("timm:test_resnet", "random", "last", "avg", images)
    for entry in (tmp_path / "features").rglob("*.npz"):
        _plant(entry, tmp_path / "ran", kind)
    again = FeatureCache(directory=tmp_path / "features")
    with pytest.warns(UserWarning, match="damaged feature cache entry"):
        np.testing.assert_array_equal(again.features("timm:test_resnet", "random", "last", "avg", images), expected)
    assert again.forward_counts == {("timm:test_resnet", "random"): 2}
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("kind", ["pickle", "npy"])
def test_a_planted_coreset_is_chosen_again_with_a_warning(tmp_path, kind):
    patches = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    expected = cached_coreset(patches, 20, 0, tmp_path)
    _plant(next(tmp_path.glob("*.npy")), tmp_path / "ran", kind)
    with pytest.warns(UserWarning, match="damaged coreset cache entry"):
        np.testing.assert_array_equal(cached_coreset(patches, 20, 0, tmp_path), expected)
    assert not (tmp_path / "ran").exists()


def test_a_planted_diffstyle_inversion_is_inverted_again_with_a_warning(tiny_ddpm_dir, tmp_path):
    from generation.diffstyle import DiffStyle

    images = _images(3)
    made = DiffStyle(model=str(tiny_ddpm_dir), steps=4, cache_dir=str(tmp_path / "inversions")).generate(images, 2, seed=0)
    for entry in (tmp_path / "inversions").glob("*.pt"):
        _plant(entry, tmp_path / "ran", "pickle")
    again = DiffStyle(model=str(tiny_ddpm_dir), steps=4, cache_dir=str(tmp_path / "inversions"))
    with pytest.warns(UserWarning, match="damaged inversion cache entry"):
        remade = again.generate(images, 2, seed=0)
    assert again.inversions_computed == 3
    assert [image.tobytes() for image in remade.images] == [image.tobytes() for image in made.images]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("target, message", [
    ("detector/bank.npy", "corrupt saved DeepKNN"),
    ("backbones/0.safetensors", "cannot read backbone weights"),
])
def test_a_planted_detector_bundle_file_is_refused(tmp_path, target, message):
    save_bundle(DeepKNN(backbone="timm:test_resnet", weights="random", layer="last", k=1).fit(_images(3)), tmp_path / "b")
    _plant(tmp_path / "b" / target, tmp_path / "ran", "npy" if target.endswith(".npy") else "pickle")
    with pytest.raises(ValueError, match=message):
        load_bundle(tmp_path / "b")
    assert not (tmp_path / "ran").exists()


def test_planted_text_features_of_a_clip_detector_are_refused(tmp_path):
    detector = ClipDetector(backbone=f"clip:{register_tiny_clip()}", weights="random",
                            normal_prompts=("a photo of a thing.",), anomalous_prompts=("a photo of a broken thing.",))
    detector.fit(_images(2)).save(tmp_path / "clip")
    _plant(tmp_path / "clip" / "text.npy", tmp_path / "ran", "npy")
    with pytest.raises(ValueError, match="corrupt saved ClipDetector .* text.npy"):
        ClipDetector.load(tmp_path / "clip")
    assert not (tmp_path / "ran").exists()


def test_planted_weights_of_a_vlad_are_refused(tmp_path):
    detector = VLAD(backbone="mobilenet_v2", layers=("mid", "last"), epochs=1, memory=100).fit(_images(3))
    detector.save(tmp_path / "vlad")
    _plant(tmp_path / "vlad" / "weights.safetensors", tmp_path / "ran", "pickle")
    with pytest.raises(ValueError, match="corrupt saved VLAD"):
        VLAD.load(tmp_path / "vlad")
    assert not (tmp_path / "ran").exists()


def test_a_registered_model_with_a_planted_artefact_does_not_load(tracking_uri, tmp_path):
    from selection.registry import register_and_promote

    labels = {"cutpaste": np.array([0] * 10 + [1] * 10)}
    detector = DeepKNN(backbone="timm:test_resnet", weights="random", layer="last", k=1).fit(_images(3))
    mlflow.set_experiment("untrusted")
    with mlflow.start_run():
        promotion = register_and_promote("planted", detector, {"synthetic_auroc": 0.9, "dataset_digest": "d"}, labels,
                                         {"cutpaste": labels["cutpaste"].astype(float)}, 0.95)
    banks = list((tmp_path / "mlruns").rglob("bank.npy"))
    assert banks  # the registered bundle's detector, in the local artefact store
    for bank in banks:
        _plant(bank, tmp_path / "ran", "npy")
    with warnings.catch_warnings(), pytest.raises(Exception, match="corrupt saved DeepKNN"):
        warnings.simplefilter("ignore")
        mlflow.pyfunc.load_model(f"models:/planted/{promotion.version}")
    assert not (tmp_path / "ran").exists()
