"""Pooled backbone features, computed once per image per backbone and shared by every detector that needs them.

One forward pass of an image through a backbone yields every layer's feature map; each is pooled both ways
("avg", "max") at once and kept, keyed by (backbone, weights, image digest), so asking for another layer or
pooling of the same image later never runs the network again.
"""

import contextlib
import hashlib
import os
import re
import tempfile
import time
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
    """Backbones (built once each) and the pooled features of every image they have seen.

    `device`: torch device for the forward passes ("cuda" runs them under fp16 autocast).
    `directory`: if given, pooled features are also kept there (one .npz of .npy arrays per backbone, weights,
    precision and image), so other processes reuse them; it must be emptied if a backbone's definition changes.

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
        self._vectors: dict[tuple[str, str, str], dict[tuple[str, str], np.ndarray]] = {}
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
        if layer not in model.layers:
            raise ValueError(f"backbone {backbone!r} has no layer {layer!r}; its layers: {', '.join(model.layers)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        images = list(images)
        if not images:
            raise ValueError("no images to compute features of")
        for image in images:
            _check_image(image)
        digests = [self._digest(image) for image in images]
        self._compute_missing(model, images, digests)
        return np.stack([self._vectors[backbone, weights, digest][layer, pooling] for digest in digests])

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
        """Forget the features kept in memory (the backbones, counters and the directory stay)."""
        self._vectors.clear()

    def _compute_missing(self, model: Backbone, images: list[np.ndarray], digests: list[str]) -> None:
        missing: dict[str, np.ndarray] = {}  # distinct images, in order
        for image, digest in zip(images, digests):
            key = (model.name, model.weights, digest)
            if key in self._vectors or digest in missing:
                continue
            stored = self._read(key)
            if stored is None:
                missing[digest] = image
            else:
                self._vectors[key] = stored
        if not missing:
            return
        pending = list(missing.items())
        with progress(total=len(pending), desc=f"features {model.name} ({model.weights})", unit="image",
                  leave=False) as bar:
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start:start + self.batch_size]
                pooled = self._forward(model, _preprocess(model, [image for _, image in chunk]))
                for row, (digest, _) in enumerate(chunk):
                    vectors = {key: values[row] for key, values in pooled.items()}
                    self._vectors[model.name, model.weights, digest] = vectors
                    self._write((model.name, model.weights, digest), vectors)
                bar.update(len(chunk))

    def _forward(self, model: Backbone, batch: torch.Tensor) -> dict[tuple[str, str], np.ndarray]:
        started = time.perf_counter()
        half = self.precision == "float16"
        autocast = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
        with autocast:
            maps = model.feature_maps(batch.to(self.device))
        pooled = {}
        for layer, feature_map in maps.items():
            feature_map = feature_map.float()
            pooled[layer, "avg"] = feature_map.mean(dim=(2, 3)).cpu().numpy()
            pooled[layer, "max"] = feature_map.amax(dim=(2, 3)).cpu().numpy()
        self.forward_seconds += time.perf_counter() - started
        key = (model.name, model.weights)
        self.forward_counts[key] = self.forward_counts.get(key, 0) + len(batch)
        return pooled

    def _path(self, key: tuple[str, str, str]) -> Path:
        name, weights, digest = key
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:64]
        tag = hashlib.sha256(f"{name}|{weights}".encode()).hexdigest()[:12]  # names can differ only in a path
        return self.directory / f"{slug}.{weights}.{self.precision}.{tag}" / f"{digest}.npz"

    def _read(self, key) -> dict[tuple[str, str], np.ndarray] | None:
        if self.directory is None:
            return None
        try:
            with np.load(self._path(key)) as stored:
                return {tuple(entry.split(".")): stored[entry] for entry in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # absent or damaged: computed again and rewritten

    def _write(self, key, vectors: dict[tuple[str, str], np.ndarray]) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed into place, so a concurrent reader never sees a partial file
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            np.savez(file, **{f"{layer}.{pooling}": values for (layer, pooling), values in vectors.items()})
        os.replace(file.name, path)


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
