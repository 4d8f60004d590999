"""VLAD, the CUT paper's detector trained on generated anomalies, in prototype mode on a frozen CNN backbone.

The backbone is frozen: each image's feature maps at `layers` come once from the FeatureCache, and training
touches only what follows them. Per stage s, a linear adapter A_s maps every patch feature into a joint
space of `dim` dimensions, where two learned prototype vectors (normal, anomalous) stand where VLAD's CLIP
mode has its text features:

- vision-language branch: each adapted patch's anomalous probability softmax(TEMPERATURE * cos(A_s f,
  prototypes_s)); the image's from the adapted mean feature of the last stage against its prototypes;
- vision-vision branch: a memory of adapted normal patches per stage (at most `memory` of them, drawn at
  random); each patch's 1 - max cosine to its stage's memory.

Map = the mean over stages of both branches' patch maps, brought to the finest stage's grid, then to the
image (detectors/maps.py); image score = the VL image probability + the largest VV patch value.

Training (fit): the normal images and `n_anomalies` anomalies generated from them by `family` (CutPaste,
Perlin or NSA: exact masks), never from any other image. Loss: focal (gamma 2) on the image probability +
omega * (BCE + adapted Dice) on the VL map against the mask at the finest grid, where the adapted Dice is
1 - D / (D + beta), D = (2 sum(y yhat) + 1) / (sum(y) + sum(yhat) + 1). Adam with cosine annealing over
`epochs`; mini-batches of BATCH images, seeded.

Training and scoring run on the FeatureCache's device: on CUDA in half precision (autocast, the losses in
float32 with loss scaling), on the CPU in float32. Saved as params.json and weights.safetensors (adapters,
prototypes, memories): nothing is unpickled.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import NotFittedError
from torch import nn

from detectors.backbones import NETWORK_LAYERS
from detectors.features import FeatureCache, ScoresThroughFeatures
from detectors.interface import register_format
from detectors.maps import ScoresAndMaps, anomaly_maps, check_one_size

_FORMAT = "vlad/1"
PARAMS_FILE, WEIGHTS_FILE = "params.json", "weights.safetensors"
FAMILIES = ("cutpaste", "perlin", "nsa")  # generators with exact masks
TEMPERATURE = 10.0  # the prototypes are learned: a milder scale than CLIP's 100 keeps their gradients alive
BATCH = 16  # training images per step
IMAGE_BATCH = 32  # images scored together
FOCAL_GAMMA = 2.0


class _Heads(nn.Module):
    """The trained part: one adapter and one pair of prototypes per stage."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.adapters = nn.ModuleList(nn.Linear(c, dim) for c in channels)
        self.prototypes = nn.Parameter(torch.randn(len(channels), 2, dim) / math.sqrt(dim))

    def adapt(self, stage: int, grid: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) feature map -> (N, h, w, dim) unit-norm adapted patches."""
        return F.normalize(self.adapters[stage](grid.permute(0, 2, 3, 1)), dim=-1)

    def anomalous_probability(self, stage: int, adapted: torch.Tensor) -> torch.Tensor:
        """(..., dim) unit vectors -> (...) probability of the anomalous prototype."""
        logits = TEMPERATURE * adapted @ F.normalize(self.prototypes[stage], dim=-1).T
        return logits.softmax(dim=-1)[..., 1]


class VLAD(ScoresThroughFeatures, ScoresAndMaps):
    """VLAD in prototype mode (see the module docstring). `features` is an optional shared FeatureCache."""

    trained_in_epochs = True  # fit takes on_epoch: a search reports each epoch and may prune

    def __init__(self, backbone: str = "mobilenet_v2", weights: str = "imagenet", layers=NETWORK_LAYERS,
                 dim: int = 128, family: str = "cutpaste", n_anomalies: int | None = None, epochs: int = 20,
                 lr: float = 1e-3, omega: float = 6.0, beta: float = 1.0, memory: int = 10_000, seed: int = 0,
                 features: FeatureCache | None = None):
        _check_params(layers, dim, family, n_anomalies, epochs, lr, omega, beta, memory, seed)
        self.backbone = backbone
        self.weights = weights
        self.layers = list(layers)
        self.dim = dim
        self.family = family
        self.n_anomalies = n_anomalies
        self.epochs = epochs
        self.lr = lr
        self.omega = omega
        self.beta = beta
        self.memory = memory
        self.seed = seed
        self.features = features

    def get_params(self, deep: bool = True) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "layers": list(self.layers), "dim": self.dim,
                "family": self.family, "n_anomalies": self.n_anomalies, "epochs": self.epochs, "lr": self.lr,
                "omega": self.omega, "beta": self.beta, "memory": self.memory, "seed": self.seed}

    @property
    def backbone_keys(self) -> list[tuple[str, str]]:
        return [(self.backbone, self.weights)]

    def __repr__(self) -> str:
        return "VLAD(" + ", ".join(f"{name}={value!r}" for name, value in self.get_params().items()) + ")"

    def fit(self, normal_images, on_epoch=None) -> "VLAD":
        """Train on `normal_images` and anomalies generated from them, then keep the adapted normal patches as
        the memory. `on_epoch(epoch, detector)`, if given, is called after each epoch with the detector usable
        for scoring (a search reports and prunes there)."""
        from generation import create_generator  # training only: a saved VLAD loads without the generators

        normals = list(normal_images)
        if len(normals) < 2:
            raise ValueError(f"VLAD trains on normal images and anomalies made from them: need at least 2, got "
                             f"{len(normals)}")
        generated = create_generator(self.family).generate(normals, self.n_anomalies or len(normals), self.seed)
        images = normals + list(generated.images)
        masks = [np.zeros(normals[0].shape[:2], np.float32)] * len(normals) + [np.asarray(m, np.float32)
                                                                               for m in generated.masks]
        labels = torch.tensor([0.0] * len(normals) + [1.0] * len(generated.images))
        grids = self._grids(images)
        device = self._device()
        torch.manual_seed(self.seed)
        self.heads_ = _Heads([grid.shape[1] for grid in grids], self.dim).to(device)
        targets = _masks_at(masks, grids[self._finest(grids)].shape[-2:]).to(device)
        labels = labels.to(device)
        optimiser = torch.optim.Adam(self.heads_.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=self.epochs)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")  # half precision needs loss scaling
        order = torch.Generator().manual_seed(self.seed)
        self.losses_ = []
        for epoch in range(self.epochs):
            total = 0.0
            for batch in torch.randperm(len(images), generator=order).split(BATCH):
                with _half_on_cuda(device):
                    image_probability, vl_map = self._vision_language([grid[batch].to(device) for grid in grids])
                image_probability, vl_map = image_probability.float(), vl_map.float()  # losses in full precision
                loss = (_focal(image_probability, labels[batch])
                        + self.omega * (F.binary_cross_entropy(vl_map, targets[batch])
                                        + _adapted_dice(vl_map, targets[batch], self.beta)))
                optimiser.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                total += loss.detach().item() * len(batch)
            schedule.step()
            self.losses_.append(total / len(images))
            if on_epoch is not None:
                self._remember([grid[: len(normals)] for grid in grids])
                on_epoch(epoch, self)
        self._remember([grid[: len(normals)] for grid in grids])
        self._forget_unshared()
        return self

    def scores_and_maps(self, images, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        if not hasattr(self, "heads_"):
            raise NotFittedError("this VLAD is not fitted yet: call fit(normal_images) first")
        images = list(images)
        if maps:
            check_one_size(images)
        device = self._device()
        self.heads_.to(device)
        self.memory_ = [memory.to(device) for memory in self.memory_]
        scores, all_maps = [], []
        for start in range(0, len(images), IMAGE_BATCH):
            batch = images[start:start + IMAGE_BATCH]
            grids = [grid.to(device) for grid in self._grids(batch)]
            with torch.no_grad(), _half_on_cuda(device):
                image_probability, vl_map = self._vision_language(grids)
                vv_map = self._vision_vision(grids)
            image_probability, patch_map = image_probability.float().cpu(), (vl_map + vv_map).float().cpu()
            scores.append((image_probability + vv_map.float().cpu().flatten(1).amax(dim=1)).double().numpy())
            if maps:
                all_maps.append(anomaly_maps(patch_map, self._input_size(), batch[0].shape[:2]))
        self._forget_unshared()
        return np.concatenate(scores), (np.concatenate(all_maps) if maps else None)

    def _device(self) -> torch.device:
        """Where the heads train and score: the FeatureCache's device (CUDA in half precision)."""
        return torch.device(self._cache().device)

    def _grids(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        maps = self._cache().feature_maps(self.backbone, self.weights, self.layers, images)
        return [torch.from_numpy(np.asarray(maps[layer], dtype=np.float32)) for layer in self.layers]

    @staticmethod
    def _finest(grids: list[torch.Tensor]) -> int:
        return max(range(len(grids)), key=lambda s: grids[s].shape[-2] * grids[s].shape[-1])

    def _vision_language(self, grids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) image probabilities and (N, h, w) patch probabilities on the finest grid, stage mean."""
        size = grids[self._finest(grids)].shape[-2:]
        maps = []
        for stage, grid in enumerate(grids):
            probability = self.heads_.anomalous_probability(stage, self.heads_.adapt(stage, grid))
            maps.append(_to_grid(probability, size))
        last = len(grids) - 1
        pooled = F.normalize(self.heads_.adapters[last](grids[last].mean(dim=(2, 3))), dim=-1)
        return self.heads_.anomalous_probability(last, pooled), torch.stack(maps).mean(dim=0)

    def _vision_vision(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """(N, h, w) 1 - max cosine to each stage's normal memory, on the finest grid, stage mean."""
        size = grids[self._finest(grids)].shape[-2:]
        maps = []
        for stage, grid in enumerate(grids):
            adapted = self.heads_.adapt(stage, grid)
            patches = adapted.reshape(-1, self.dim)
            similarity = torch.cat([chunk @ self.memory_[stage].T for chunk in patches.split(4096)])
            maps.append(_to_grid((1 - similarity.amax(dim=1)).reshape(adapted.shape[:3]), size))
        return torch.stack(maps).mean(dim=0)

    def _remember(self, normal_grids: list[torch.Tensor]) -> None:
        """The memory: per stage, at most `memory` adapted normal patches, drawn at random (seeded)."""
        draw = torch.Generator().manual_seed(self.seed)
        device = self._device()
        self.memory_ = []
        with torch.no_grad():
            for stage, grid in enumerate(normal_grids):
                patches = self.heads_.adapt(stage, grid.to(device)).float().reshape(-1, self.dim).cpu()
                if len(patches) > self.memory:
                    patches = patches[torch.randperm(len(patches), generator=draw)[: self.memory]]
                self.memory_.append(patches.contiguous().to(device))

    def save(self, directory) -> None:
        """params.json and weights.safetensors (adapters, prototypes and the memories)."""
        from safetensors.torch import save_file

        if not hasattr(self, "heads_"):
            raise NotFittedError("this VLAD is not fitted yet: only a fitted detector can be saved")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PARAMS_FILE).write_text(json.dumps({"format": _FORMAT, **self.get_params()}, indent=2))
        tensors = {f"heads.{name}": value.detach().cpu().contiguous() for name, value in self.heads_.state_dict().items()}
        tensors.update({f"memory.{stage}": memory.cpu().contiguous() for stage, memory in enumerate(self.memory_)})
        save_file(tensors, str(directory / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory, features: FeatureCache | None = None) -> "VLAD":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / PARAMS_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"no saved VLAD in {directory}: expected {PARAMS_FILE} and {WEIGHTS_FILE}")
        try:
            params = json.loads((directory / PARAMS_FILE).read_text())
            if params.pop("format") != _FORMAT:
                raise ValueError(f"unsupported format (expected {_FORMAT})")
            detector = cls(**params, features=features)
            tensors = load_file(str(directory / WEIGHTS_FILE))
            stages = len(detector.layers)
            channels = [tensors[f"heads.adapters.{s}.weight"].shape[1] for s in range(stages)]
            detector.heads_ = _Heads(channels, detector.dim)
            detector.heads_.load_state_dict({name.removeprefix("heads."): value for name, value in tensors.items()
                                             if name.startswith("heads.")}, strict=True)
            detector.memory_ = [tensors[f"memory.{s}"] for s in range(stages)]
        except (ValueError, TypeError, KeyError, RuntimeError, OSError, SafetensorError) as error:
            raise ValueError(f"corrupt saved VLAD in {directory}: {error}") from None
        return detector


def _half_on_cuda(device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")


def _to_grid(patch_map: torch.Tensor, size) -> torch.Tensor:
    if patch_map.shape[-2:] == tuple(size):
        return patch_map
    return F.interpolate(patch_map[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _masks_at(masks: list[np.ndarray], size) -> torch.Tensor:
    """(N, h, w) soft targets: each mask's share of anomalous pixels in each cell of the grid."""
    stacked = torch.from_numpy(np.stack([np.asarray(m, np.float32) for m in masks]))[:, None]
    return F.adaptive_avg_pool2d(stacked, tuple(size))[:, 0].clamp(0, 1)


def _focal(probability: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    p = probability.clamp(1e-6, 1 - 1e-6)
    correct = torch.where(label > 0.5, p, 1 - p)
    return (-(1 - correct) ** FOCAL_GAMMA * correct.log()).mean()


def _adapted_dice(predicted: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """1 - D / (D + beta), D = (2 sum(y yhat) + 1) / (sum(y) + sum(yhat) + 1) per image, averaged."""
    dims = tuple(range(1, predicted.dim()))
    dice = (2 * (predicted * target).sum(dims) + 1) / (target.sum(dims) + predicted.sum(dims) + 1)
    return (1 - dice / (dice + beta)).mean()


def _check_params(layers, dim, family, n_anomalies, epochs, lr, omega, beta, memory, seed) -> None:
    if not layers or any(layer not in NETWORK_LAYERS for layer in layers):
        raise ValueError(f"layers must be some of {', '.join(NETWORK_LAYERS)}, got {list(layers)!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)} (generators with exact masks), got {family!r}")
    for name, value, low in (("dim", dim, 1), ("epochs", epochs, 1), ("memory", memory, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
    if n_anomalies is not None and (not isinstance(n_anomalies, int) or n_anomalies < 1):
        raise ValueError(f"n_anomalies must be a positive integer or None, got {n_anomalies!r}")
    for name, value in (("lr", lr), ("omega", omega), ("beta", beta)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


register_format(_FORMAT, VLAD.load)
