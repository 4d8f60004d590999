"""Backbone features, computed once per image per backbone and shared by every detector that needs them.

One forward pass of an image through a backbone yields every layer's feature map; each is pooled both ways
("avg", "max") at once and kept, keyed by (backbone, weights, image digest), so asking for another layer or
pooling of the same image later never runs the network again. Patch-level detectors (PatchCore) ask for the
feature maps themselves (`feature_maps`): those of the layers asked for are kept too, and from then on every
forward pass of that backbone keeps them, so one pass serves pooled and map requests alike.
"""

import contextlib
import hashlib
import os
import re
import tempfile
import time
import warnings
import weakref
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compat.progress import progress
from detectors.backbones import Backbone, create_backbone
from detectors.images import image_digest

POOLINGS = ("avg", "max")


class FeatureCache:
    """Backbones (built once each) and the pooled features (and, where asked for, feature maps) of every image
    they have seen.

    `device`: torch device for the forward passes ("cuda" runs them under fp16 autocast).
    `directory`: if given, features are also kept there, so other processes reuse them: per backbone, weights,
    precision and image, `<digest>.npz` holds the pooled vectors of every layer and `<digest>.maps.npz` the
    float32 feature maps of the layers asked for as maps; both are written atomically. A file that lacks a layer
    asked for (written before the backbone gained it) or cannot be read is computed again and rewritten. The
    directory must be emptied if an existing layer's definition changes.

    `forward_counts[(backbone, weights)]` counts the images passed through each network and `forward_seconds`
    the time spent in forward passes, so that a benchmark can check and time them.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 32, directory=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size
        self.directory = None if directory is None else Path(directory)
        self.forward_counts: dict[tuple[str, str], int] = {}
        self.forward_seconds = 0.0
        self._backbones: dict[tuple[str, str], Backbone] = {}
        self._vectors: dict[tuple[str, str, str], dict[tuple[str, str], np.ndarray]] = {}  # every layer x pooling
        self._maps: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}  # layer -> (C, h, w) float32
        self._map_layers: dict[tuple[str, str], set[str]] = {}  # layers whose maps every pass keeps
        self._read_only_digests: dict[int, tuple[weakref.ref, str]] = {}

    @property
    def precision(self) -> str:
        """What the forward passes compute in: half precision on CUDA changes the features, so it keys them."""
        return "float16" if torch.device(self.device).type == "cuda" else "float32"

    def add_backbone(self, backbone: Backbone) -> None:
        """Use `backbone` for its name and weights instead of building one (e.g. one rebuilt from saved weights)."""
        self._backbones[backbone.name, backbone.weights] = backbone.to(self.device)

    def backbone(self, name: str, weights: str) -> Backbone:
        """The backbone `name` with `weights`, built on first use."""
        if (name, weights) not in self._backbones:
            self._backbones[name, weights] = create_backbone(name, weights).to(self.device)
        return self._backbones[name, weights]

    def features(self, backbone: str, weights: str, layer: str, pooling: str, images) -> np.ndarray:
        """(N, D) float32: the `pooling` of `backbone`'s `layer` feature map, for each image (uint8 HxWx3)."""
        model = self.backbone(backbone, weights)
        _check_layers(model, [layer])
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        images, digests = self._checked_images(images)
        self._compute_missing(model, images, digests, map_layers=())
        return np.stack([self._vectors[backbone, weights, digest][layer, pooling] for digest in digests])

    def feature_maps(self, backbone: str, weights: str, layers, images) -> dict[str, np.ndarray]:
        """{layer: (N, C, h, w) float32}: `backbone`'s feature maps at `layers` for each image (uint8 HxWx3).

        The maps are kept in memory (and in `directory`), and from now on every forward pass of this backbone
        keeps these layers' maps too, whichever request causes it."""
        model = self.backbone(backbone, weights)
        layers = list(dict.fromkeys(layers))
        if not layers:
            raise ValueError("no layers to compute feature maps of")
        _check_layers(model, layers)
        images, digests = self._checked_images(images)
        self.keep_maps(backbone, weights, layers)
        self._compute_missing(model, images, digests, map_layers=layers)
        return {layer: np.stack([self._maps[backbone, weights, digest][layer] for digest in digests])
                for layer in layers}

    def keep_maps(self, backbone: str, weights: str, layers) -> None:
        """Keep the feature maps of `layers` from every later forward pass of this backbone, pooled requests'
        included: declared before deep kNN and PatchCore score the same images, one pass serves both."""
        _check_layers(self.backbone(backbone, weights), layers)
        self._map_layers.setdefault((backbone, weights), set()).update(layers)

    def _checked_images(self, images) -> tuple[list[np.ndarray], list[str]]:
        images = list(images)
        if not images:
            raise ValueError("no images to compute features of")
        for image in images:
            _check_image(image)
        return images, [self._digest(image) for image in images]

    def _digest(self, image: np.ndarray) -> str:
        """The image's content digest; remembered for read-only arrays, which cannot change in place, so that
        scoring the same evidence again (a search trial) hashes nothing."""
        if image.flags.writeable:
            return image_digest(image)
        known = self._read_only_digests.get(id(image))
        if known is not None and known[0]() is image:
            return known[1]
        key = id(image)
        self._read_only_digests[key] = (weakref.ref(image, lambda _, key=key: self._forget_digest(key)),
                                        image_digest(image))
        return self._read_only_digests[key][1]

    def _forget_digest(self, key: int) -> None:
        entry = self._read_only_digests.get(key)
        if entry is not None and entry[0]() is None:
            del self._read_only_digests[key]

    def n_images(self, backbone: str, weights: str) -> int:
        """How many distinct images have features from this backbone in memory."""
        return sum(1 for key in self._vectors if key[:2] == (backbone, weights))

    def clear(self) -> None:
        """Forget the features and maps kept in memory (the backbones, counters, the layers whose maps are kept
        and the directory stay)."""
        self._vectors.clear()
        self._maps.clear()

    def _compute_missing(self, model: Backbone, images: list[np.ndarray], digests: list[str],
                         map_layers) -> None:
        """Fill the pooled vectors of every image and its maps at `map_layers` (from memory, else the
        directory, else one forward pass); a pass also keeps the maps of the layers `keep_maps` named."""
        everything = {(layer, pooling) for layer in model.layers for pooling in POOLINGS}
        missing: dict[str, np.ndarray] = {}  # distinct images, in order
        for image, digest in zip(images, digests):
            key = (model.name, model.weights, digest)
            if digest in missing:
                continue
            if key not in self._vectors:
                stored = self._read(self._path(key))
                if stored is not None and everything <= stored.keys():
                    self._vectors[key] = stored
            if map_layers and not set(map_layers) <= self._maps.get(key, {}).keys():
                stored = self._read(self._maps_path(key))
                if stored is not None and set(map_layers) <= stored.keys():
                    self._maps[key] = {**stored, **self._maps.get(key, {})}
            if key not in self._vectors or not set(map_layers) <= self._maps.get(key, {}).keys():
                missing[digest] = image
        if not missing:
            return
        keep = sorted(self._map_layers.get((model.name, model.weights), set()) | set(map_layers))
        pending = list(missing.items())
        with progress(total=len(pending), desc=f"features {model.name} ({model.weights})", unit="image",
                  leave=False) as bar:
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start:start + self.batch_size]
                pooled, maps = self._forward(model, _preprocess(model, [image for _, image in chunk]), keep)
                for row, (digest, _) in enumerate(chunk):
                    self._keep((model.name, model.weights, digest), {key: values[row] for key, values in pooled.items()},
                               {layer: values[row].copy() for layer, values in maps.items()})
                bar.update(len(chunk))

    def _keep(self, key, vectors: dict[tuple[str, str], np.ndarray], maps: dict[str, np.ndarray]) -> None:
        """Keep what a pass computed for one image, never replacing what is already kept (a later pass, batched
        differently, may differ in the last bits, and a detector fitted on the first values must see them)."""
        if key not in self._vectors:
            self._vectors[key] = vectors
            self._write(self._path(key), {f"{layer}.{pooling}": v for (layer, pooling), v in vectors.items()})
        known = self._maps.setdefault(key, {})
        if not maps.keys() <= known.keys():
            known.update({layer: values for layer, values in maps.items() if layer not in known})
            self._write(self._maps_path(key), known)

    def _forward(self, model: Backbone, batch: torch.Tensor, map_layers
                 ) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, np.ndarray]]:
        """Every layer's pooled vectors {(layer, pooling): (B, C)} and the maps {layer: (B, C, h, w)} of
        `map_layers`, from one forward pass of `batch`."""
        started = time.perf_counter()
        half = self.precision == "float16"
        autocast = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
        with autocast:
            maps = model.feature_maps(batch.to(self.device))
        pooled, kept = {}, {}
        for layer, feature_map in maps.items():
            feature_map = feature_map.float()
            pooled[layer, "avg"] = feature_map.mean(dim=(2, 3)).cpu().numpy()
            pooled[layer, "max"] = feature_map.amax(dim=(2, 3)).cpu().numpy()
            if layer in map_layers:
                kept[layer] = feature_map.cpu().numpy()
        self.forward_seconds += time.perf_counter() - started
        key = (model.name, model.weights)
        self.forward_counts[key] = self.forward_counts.get(key, 0) + len(batch)
        return pooled, kept

    def _path(self, key: tuple[str, str, str]) -> Path | None:
        """Where an image's pooled vectors are kept (None without a directory)."""
        if self.directory is None:
            return None
        name, weights, digest = key
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:64]
        tag = hashlib.sha256(f"{name}|{weights}".encode()).hexdigest()[:12]  # names can differ only in a path
        return self.directory / f"{slug}.{weights}.{self.precision}.{tag}" / f"{digest}.npz"

    def _maps_path(self, key: tuple[str, str, str]) -> Path | None:
        """Where an image's feature maps are kept, beside its pooled vectors (None without a directory)."""
        path = self._path(key)
        return None if path is None else path.with_name(f"{key[2]}.maps.npz")

    @staticmethod
    def _read(path: Path | None) -> dict | None:
        """A kept file's float32 arrays: pooled ones keyed (layer, pooling), maps by layer; None when there is
        no directory or the file is absent or damaged (then it is computed again and rewritten, with a warning)."""
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {entry: stored[entry] for entry in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            arrays = None
        if arrays is None or any(array.dtype != np.float32 for array in arrays.values()):
            warnings.warn(f"damaged feature cache entry {path}: computing it again", stacklevel=3)
            return None
        return {tuple(entry.split(".")) if "." in entry else entry: array for entry, array in arrays.items()}

    @staticmethod
    def _write(path: Path | None, arrays: dict[str, np.ndarray]) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed into place, so a concurrent reader never sees a partial file
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            np.savez(file, **arrays)
        os.replace(file.name, path)


def _check_layers(model: Backbone, layers) -> None:
    for layer in layers:
        if layer not in model.layers:
            raise ValueError(f"backbone {model.name!r} has no layer {layer!r}; its layers: {', '.join(model.layers)}")


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"images must be uint8 RGB arrays of shape (H, W, 3), got a {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be uint8 RGB arrays of shape (H, W, 3), got {image.dtype} {image.shape}")


def _preprocess(model: Backbone, images: list[np.ndarray]) -> torch.Tensor:
    """Resize (PIL bilinear) to the backbone's input size, scale to [0, 1] and normalise: (N, 3, S, S)."""
    size = (model.input_size, model.input_size)
    resized = np.stack([np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)) for image in images])
    batch = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    return (batch - mean) / std


class ScoresThroughFeatures:
    """For detectors that compute features through a FeatureCache: their `features` if shared (not a
    hyper-parameter), else a private one that forgets each call's features, which would otherwise only grow
    with every image ever scored. The detector sets `features`, `backbone` and `weights`."""

    features: "FeatureCache | None"
    backbone: str
    weights: str

    def _cache(self) -> FeatureCache:
        if self.features is not None:
            return self.features
        if not hasattr(self, "_own_features"):
            self._own_features = FeatureCache()
        return self._own_features

    def _forget_unshared(self) -> None:
        if self.features is None:
            self._cache().clear()

    def _input_size(self) -> int:
        return self._cache().backbone(self.backbone, self.weights).input_size

