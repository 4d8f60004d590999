"""The generator contract: hyper-parameters in the constructor, a cheap request digest, a seeded `generate`."""

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from generation import options
from generation.synthetic_set import SyntheticSet, request_digest


class Generator(ABC):
    """An anomaly generator, built from keyword hyper-parameters only (scikit-learn style).

    Subclasses store every constructor argument under its own name, so `get_params()` is what a run logs and
    what a search suggests. `generate` must depend on nothing but its arguments and the hyper-parameters:
    the same request gives the same set, bit for bit.
    """

    name: ClassVar[str]

    def get_params(self) -> dict:
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"

    def digest(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> str:
        """The digest `generate(normal_images, n, seed).digest` will have, without generating anything.

        It validates the request on the way, so `generate` implementations start by calling it.
        """
        _check_request(normal_images, n, seed)
        self._check_images(normal_images)
        return request_digest(self.name, {**self.get_params(), **self.numerics()}, n, seed, normal_images)

    def numerics(self) -> dict:
        """What changes the numbers besides the hyper-parameters (a diffusion model in half precision on a
        GPU draws other images than in float32 on a CPU): it enters the digest, so stored sets never mix."""
        return {}

    def _check_images(self, normal_images: Sequence[np.ndarray]) -> None:
        """Raise a ValueError for images this generator cannot use beyond what `_check_request` checks (sizes...)."""

    @abstractmethod
    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        """`n` synthetic anomalies made from `normal_images` (uint8 (H, W, 3) RGB arrays), seeded by `seed`."""


def check_one_size(normal_images: Sequence[np.ndarray], min_side: int, generator: str) -> None:
    """Raise a short ValueError unless all `normal_images` share one size of at least `min_side` px a side:
    what a `generator` that blends one normal image into another needs."""
    shapes = {image.shape for image in normal_images}
    if len(shapes) > 1:
        raise ValueError(f"{generator} blends one normal image into another: all must share a size, got "
                         f"{sorted(shapes)[:3]}")
    height, width = normal_images[0].shape[:2]
    if min(height, width) < min_side:
        raise ValueError(f"normal images are {height}x{width} px: too small for {generator}, which needs at "
                         f"least {min_side} px a side")


def _check_request(normal_images: Sequence[np.ndarray], n: int, seed: int) -> None:
    """Raise a short ValueError naming the first bad argument of a generation request."""
    options.integer("n", n, minimum=1)
    options.integer("seed", seed, minimum=0)
    if len(normal_images) == 0:
        raise ValueError("normal_images is empty: a generator needs at least one normal image")
    for index, image in enumerate(normal_images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            found = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                     else type(image).__name__)
            raise ValueError(f"normal_images[{index}] must be a uint8 (H, W, 3) RGB array, got a {found}")
