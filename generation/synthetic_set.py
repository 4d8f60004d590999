"""The result of a generator: synthetic anomalies with their masks, and the digest of the request that made them."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticSet:
    """`n` synthetic anomalies (label 1) made by one generator from a list of normal images.

    Images are uint8 (H, W, 3) RGB arrays; masks are float32 (H, W) arrays in [0, 1], or None where a
    generator only labels whole images. `sources[i]` indexes the normal image sample i was made from and
    `sample_params[i]` holds what was drawn for it (JSON-serialisable).
    """

    generator: str
    params: dict
    seed: int
    digest: str
    images: list[np.ndarray]
    masks: list[np.ndarray | None]
    sources: list[int]
    sample_params: list[dict]
    rejected: int  # draws rejected (e.g. as invisible) and redrawn

    def __post_init__(self):
        lengths = {len(self.images), len(self.masks), len(self.sources), len(self.sample_params)}
        if len(lengths) != 1:
            raise ValueError(f"images, masks, sources and sample_params must have equal lengths, got "
                             f"{len(self.images)}, {len(self.masks)}, {len(self.sources)}, {len(self.sample_params)}")

    def __len__(self) -> int:
        return len(self.images)


def request_digest(generator: str, params: dict, n: int, seed: int, images: Sequence[np.ndarray]) -> str:
    """SHA-256 (hex) of a generation request: generator name, parameters, n, seed and the source images in order.

    Equal requests have equal digests, so a stored set can stand in for generating it again.
    """
    header = {"generator": generator, "params": params, "n": int(n), "seed": int(seed),
              "images": [[list(image.shape), image.dtype.str] for image in images]}
    hasher = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for image in images:
        hasher.update(np.ascontiguousarray(image).data)  # the header fixes each image's length
    return hasher.hexdigest()
