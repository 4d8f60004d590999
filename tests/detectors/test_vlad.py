"""VLAD in prototype mode: trained on anomalies generated from its normal images, it separates real bottle
defects; seeded training reproduces its weights; it saves as safetensors and loads to the same scores; its
losses are the paper's."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from detectors import FeatureCache, VLAD, load_detector
from detectors.vlad import _adapted_dice, _focal

FAST = {"backbone": "mobilenet_v2", "weights": "imagenet", "layers": ("mid", "last"), "epochs": 3, "memory": 2000}


def _bottle(mvtec_root, folder: str, n: int, size: int = 128) -> list[np.ndarray]:
    paths = sorted((mvtec_root / "bottle" / folder).glob("*.png"))[:n]
    return [np.asarray(Image.open(path).convert("RGB").resize((size, size))) for path in paths]


@pytest.fixture(scope="module")
def bottle(mvtec_root):
    return {"train": _bottle(mvtec_root, "train/good", 24), "good": _bottle(mvtec_root, "test/good", 8),
            "broken": _bottle(mvtec_root, "test/broken_large", 8)}


def test_trained_on_generated_anomalies_it_separates_real_defects_with_maps(bottle):
    features = FeatureCache()
    epochs = []
    detector = VLAD(**FAST, features=features).fit(bottle["train"], on_epoch=lambda epoch, d: epochs.append(epoch))
    assert epochs == [0, 1, 2] and len(detector.losses_) == 3 and detector.losses_[-1] < detector.losses_[0]
    scores, maps = detector.scores_and_maps(bottle["good"] + bottle["broken"])
    assert roc_auc_score([0] * 8 + [1] * 8, scores) > 0.9
    assert maps.shape == (16, 128, 128) and maps.dtype == np.float32
    np.testing.assert_allclose(detector.anomaly_scores(bottle["broken"]), scores[8:], rtol=1e-5)


def test_seeded_training_reproduces_the_weights_and_a_saved_vlad_the_scores(bottle, tmp_path):
    first = VLAD(**FAST).fit(bottle["train"])
    second = VLAD(**FAST).fit(bottle["train"])
    for (name, a), (_, b) in zip(first.heads_.state_dict().items(), second.heads_.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    other_seed = VLAD(**{**FAST, "seed": 1}).fit(bottle["train"])
    assert not torch.equal(other_seed.heads_.prototypes, first.heads_.prototypes)

    first.save(tmp_path / "vlad")
    assert sorted(p.name for p in (tmp_path / "vlad").iterdir()) == ["params.json", "weights.safetensors"]
    restored = load_detector(tmp_path / "vlad")
    assert isinstance(restored, VLAD) and restored.get_params() == first.get_params()
    np.testing.assert_allclose(restored.anomaly_scores(bottle["broken"]), first.anomaly_scores(bottle["broken"]),
                               rtol=1e-6)


def test_the_losses_are_the_papers():
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    perfect, empty = target.clone(), torch.zeros_like(target)
    # D = (2 sum(y yhat) + 1) / (sum y + sum yhat + 1): 1 when perfect, 1/2 when nothing is predicted
    assert float(_adapted_dice(perfect, target, beta=1.0)) == pytest.approx(1 - 1 / 2)
    assert float(_adapted_dice(empty, target, beta=1.0)) == pytest.approx(1 - 0.5 / 1.5)
    assert float(_adapted_dice(perfect, target, beta=0.5)) == pytest.approx(1 - 1 / 1.5)
    # focal loss: a confident right answer costs almost nothing, a confident wrong one a lot
    right, wrong = _focal(torch.tensor([0.95]), torch.tensor([1.0])), _focal(torch.tensor([0.05]), torch.tensor([1.0]))
    assert float(right) == pytest.approx(-(0.05 ** 2) * np.log(0.95)) and float(wrong) > 100 * float(right)


@pytest.mark.parametrize("change, message", [
    ({"family": "diffstyle"}, "family must be one of cutpaste, perlin, nsa"),
    ({"layers": ("raw",)}, "layers must be some of early, mid, last"),
    ({"epochs": 0}, "epochs must be an integer of at least 1"),
    ({"lr": 0}, "lr must be positive"),
])
def test_bad_hyper_parameters_fail_clearly(change, message):
    with pytest.raises(ValueError, match=message):
        VLAD(**{**FAST, **change})
