"""CLIP zero-shot anomaly detection by text prompts (SWSA's prompt candidates, WinCLIP), with anomaly maps from
patch tokens and an optional few-shot visual memory (WinCLIP+-style).

Text: each state (normal, anomalous) is described by one or more prompts; a state's text feature is the
mean of its prompts' unit-length embeddings, renormalised (one prompt: its embedding; several: the prompt
ensemble). Image score = the anomalous probability of softmax(100 [cos(image, normal), cos(image, anomalous)]),
with the image embedding from the "image" layer of a `clip:` backbone (detectors/clip_backbone.py). Map: the
same probability for each patch token of the "patch" layer, upsampled and smoothed as every map here is
(detectors/maps.py).

Few-shot (`few_shot=True`): the unit-length patch tokens of the normal images `fit` sees are kept as a visual
memory; a patch's visual score is (1 - its largest cosine similarity to the memory) / 2, in [0, 1] like the
text probability, and an image's the largest over its patches. Score and map are then
(1 - visual_weight) x text + visual_weight x visual. Zero-shot, `fit` only encodes the prompts: the normal
images are not used.

Every image is encoded once per backbone through the FeatureCache and every prompt once per backbone object,
so detectors that differ only in their prompts share all image work. The fitted text features and memory are
saved (params.json, text.npy, bank.npy): a loaded detector never runs the text tower.
"""

import numbers
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

from detectors.backbones import backbone_weights
from detectors.banked import load_banked, save_banked
from detectors.clip_backbone import CLIP_PREFIX
from detectors.features import FeatureCache, ScoresThroughFeatures
from detectors.interface import register_format
from detectors.maps import ScoresAndMaps, anomaly_maps, check_one_size
from detectors.patchcore import nearest_neighbours

_FORMAT = "clip/1"
TEXT_FILE = "text.npy"
LOGIT_SCALE = 100.0  # CLIP's learned temperature, as SWSA and WinCLIP apply it
IMAGE_BATCH = 32


class ClipDetector(ScoresThroughFeatures, ScoresAndMaps):
    """Zero- or few-shot CLIP detector (see the module docstring). `features` is an optional shared
    FeatureCache, not a hyper-parameter."""

    def __init__(self, backbone: str = "clip:ViT-B-16-plus-240@laion400m_e31", weights: str = "pretrained",
                 normal_prompts=("a photo of a object.",), anomalous_prompts=("a photo of a object with defect.",),
                 few_shot: bool = False, visual_weight: float = 0.5, features: FeatureCache | None = None):
        _check_params(backbone, weights, normal_prompts, anomalous_prompts, few_shot, visual_weight)
        self.backbone = backbone
        self.weights = weights
        self.normal_prompts = list(normal_prompts)
        self.anomalous_prompts = list(anomalous_prompts)
        self.few_shot = few_shot
        self.visual_weight = visual_weight
        self.features = features

    def get_params(self, deep: bool = True) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "normal_prompts": list(self.normal_prompts),
                "anomalous_prompts": list(self.anomalous_prompts), "few_shot": self.few_shot,
                "visual_weight": self.visual_weight}

    @property
    def backbone_keys(self) -> list[tuple[str, str]]:
        return [(self.backbone, self.weights)]

    def __repr__(self) -> str:
        return "ClipDetector(" + ", ".join(f"{name}={value!r}" for name, value in self.get_params().items()) + ")"

    def fit(self, normal_images) -> "ClipDetector":
        """Encode the prompts (`text_`: normal, anomalous) and, few-shot, keep the normal images' patch tokens
        (`bank_`; zero-shot it is empty)."""
        images = list(normal_images)
        if self.few_shot and not images:
            raise ValueError("a few-shot CLIP detector needs normal images to fit on")
        towers = self._cache().backbone(self.backbone, self.weights).network
        self.text_ = np.stack([_state_feature(towers.text_features(self.normal_prompts)),
                               _state_feature(towers.text_features(self.anomalous_prompts))])
        if self.few_shot:
            self.bank_ = np.concatenate([grid.reshape(-1, grid.shape[-1]) for grid in self._patch_grids(images)])
        else:
            self.bank_ = np.zeros((0, self.text_.shape[1]), dtype=np.float32)
        return self

    def scores_and_maps(self, images, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        if not hasattr(self, "text_"):
            raise NotFittedError("this ClipDetector is not fitted yet: call fit(normal_images) first")
        images = list(images)
        if maps:
            check_one_size(images)
        if maps or self.few_shot:  # one forward pass gives the embedding and the patch tokens
            self._cache().keep_maps(self.backbone, self.weights, ["patch"])
        text = torch.from_numpy(self.text_)
        embeddings = _unit(torch.from_numpy(self._cache().features(self.backbone, self.weights, "image", "avg", images)))
        scores = _anomalous_probability(embeddings @ text.T).double().numpy()
        if not (maps or self.few_shot):
            return scores, None
        bank = torch.from_numpy(self.bank_)
        all_maps, visual_scores = [], []
        for start in range(0, len(images), IMAGE_BATCH):
            batch = images[start:start + IMAGE_BATCH]
            grids = torch.from_numpy(self._patch_grids(batch))
            n, h, w, d = grids.shape
            patch_scores = _anomalous_probability(grids.reshape(-1, d) @ text.T)
            if self.few_shot:
                distances, _ = nearest_neighbours(bank, grids.reshape(-1, d), 1)
                visual = distances[:, 0].square() / 4  # unit vectors: |a - b|^2 / 4 = (1 - cos) / 2
                visual_scores.append(visual.reshape(n, -1).amax(dim=1).double().numpy())
                patch_scores = (1 - self.visual_weight) * patch_scores + self.visual_weight * visual
            if maps:
                all_maps.append(anomaly_maps(patch_scores.reshape(n, h, w), self._input_size(), batch[0].shape[:2]))
        if self.few_shot:
            scores = (1 - self.visual_weight) * scores + self.visual_weight * np.concatenate(visual_scores)
        return scores, (np.concatenate(all_maps) if maps else None)

    def _patch_grids(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, h, w, D) float32 unit-length patch tokens of `images`."""
        cache = self._cache()
        grids = [cache.feature_maps(self.backbone, self.weights, ["patch"], images[start:start + IMAGE_BATCH])["patch"]
                 for start in range(0, len(images), IMAGE_BATCH)]
        self._forget_unshared()
        tokens = torch.from_numpy(np.concatenate(grids)).permute(0, 2, 3, 1)
        return _unit(tokens).contiguous().numpy()

    def save(self, directory) -> None:
        """Write the hyper-parameters (params.json), the text features (text.npy) and the visual memory (bank.npy)."""
        if not hasattr(self, "text_"):
            raise NotFittedError("this ClipDetector is not fitted yet: only a fitted detector can be saved")
        save_banked(self, directory, _FORMAT)
        np.save(Path(directory) / TEXT_FILE, self.text_)

    @classmethod
    def load(cls, directory, features: FeatureCache | None = None) -> "ClipDetector":
        """A detector written by `save`, scoring through `features` if given."""
        detector, bank = load_banked(cls, directory, _FORMAT, features)
        try:
            text = np.load(Path(directory) / TEXT_FILE, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"corrupt saved ClipDetector in {directory}: {TEXT_FILE}: {error}") from None
        if text.ndim != 2 or text.shape[0] != 2 or text.dtype != np.float32 or bank.dtype != np.float32 \
                or bank.ndim != 2 or bank.shape[1] != text.shape[1] or (detector.few_shot and not len(bank)):
            raise ValueError(f"corrupt saved ClipDetector in {directory}: text {text.dtype} {text.shape}, "
                             f"memory {bank.dtype} {bank.shape}")
        detector.text_, detector.bank_ = text, bank
        return detector


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows.float(), dim=-1)


def _state_feature(prompt_features: np.ndarray) -> np.ndarray:
    """A state's text feature: the mean of its prompts' unit embeddings, renormalised."""
    return _unit(torch.from_numpy(prompt_features).mean(dim=0)).numpy()


def _anomalous_probability(similarities: torch.Tensor) -> torch.Tensor:
    """softmax(LOGIT_SCALE [normal, anomalous])[anomalous] of (..., 2) cosine similarities."""
    return torch.softmax(LOGIT_SCALE * similarities, dim=-1)[..., 1]


def _check_params(backbone, weights, normal_prompts, anomalous_prompts, few_shot, visual_weight) -> None:
    if not isinstance(backbone, str) or not backbone.startswith(CLIP_PREFIX):
        raise ValueError(f"backbone must be a CLIP backbone, {CLIP_PREFIX}<architecture>@<pretrained>, got {backbone!r}")
    if weights not in backbone_weights(backbone):
        raise ValueError(f"backbone {backbone!r} takes weights {' or '.join(map(repr, backbone_weights(backbone)))}, "
                         f"not {weights!r}")
    for state, prompts in (("normal_prompts", normal_prompts), ("anomalous_prompts", anomalous_prompts)):
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts \
                or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{state} must be a non-empty list of non-empty strings, got {prompts!r}")
    if not isinstance(few_shot, bool):
        raise ValueError(f"few_shot must be True or False, got {few_shot!r}")
    if isinstance(visual_weight, bool) or not isinstance(visual_weight, numbers.Real) or not 0 <= visual_weight <= 1:
        raise ValueError(f"visual_weight must be a number in [0, 1], got {visual_weight!r}")


register_format(_FORMAT, ClipDetector.load)
