"""The rule that rejects invisible synthetic anomalies, shared by the generators that paste or blend pixels,
and the draw-until-visible loop of those that draw a whole sample at once (Perlin, NSA).

A draw is visible when at least `min_changed_pixels` pixels change by more than `min_change` levels. The
count is given for a 256 x 256 image and scales with the image's area; a pixel's change is its largest
absolute difference over R, G and B, so on grey images it is the grey-level change and a shift of colour
alone also counts.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np

from generation.synthetic_set import SyntheticSet

REFERENCE_AREA = 256 * 256  # the image area `min_changed_pixels` is given for


def changed_mask(before: np.ndarray, after: np.ndarray, min_change: float) -> np.ndarray:
    """(h, w) bool: the pixels of `after` (uint8 (h, w, 3)) that differ from `before` by more than
    `min_change` levels."""
    return np.abs(after.astype(np.int16) - before).max(axis=2) > min_change


def changed_pixels(before: np.ndarray, after: np.ndarray, min_change: float, where: np.ndarray | None = None) -> int:
    """How many pixels `changed_mask` marks, counted only where the bool mask `where` is set if it is given."""
    changed = changed_mask(before, after, min_change)
    return int(np.count_nonzero(changed if where is None else changed & where))


def required_changed_pixels(min_changed_pixels: int, image: np.ndarray) -> int:
    """`min_changed_pixels` (given at 256 x 256) for an image of this size."""
    return math.ceil(min_changed_pixels * image.shape[0] * image.shape[1] / REFERENCE_AREA)


def generate_visible(generator, normal_images: Sequence[np.ndarray], n: int, seed: int,
                     draw: Callable[[np.random.Generator, Sequence[np.ndarray], int],
                                    tuple[np.ndarray, np.ndarray, dict]]) -> SyntheticSet:
    """`n` samples of `generator`: each `draw(rng, normal_images, source)` -> (image, mask, params) on a normal
    image `source` drawn at random, redrawn (source included) while it changes fewer pixels than the
    generator's `min_changed_pixels` (at least one) by more than its `min_change`; a ValueError after
    `max_attempts` invisible draws in a row."""
    digest = generator.digest(normal_images, n, seed)
    rng = np.random.default_rng(seed)
    images, masks, sources, sample_params = [], [], [], []
    rejected = 0
    for index in range(n):
        for _ in range(generator.max_attempts):
            source = int(rng.integers(len(normal_images)))
            image, mask, params = draw(rng, normal_images, source)
            needed = required_changed_pixels(generator.min_changed_pixels, image)
            if changed_pixels(normal_images[source], image, generator.min_change) >= max(needed, 1):
                break
            rejected += 1
        else:
            raise ValueError(f"{type(generator).__name__} found no visible anomaly for sample {index}: "
                             f"{generator.max_attempts} draws in a row changed fewer than "
                             f"{generator.min_changed_pixels} pixels (at 256 x 256) by more than "
                             f"{generator.min_change:g} levels; lower min_changed_pixels or min_change")
        images.append(image)
        masks.append(mask)
        sources.append(source)
        sample_params.append(params)
    return SyntheticSet(generator=generator.name, params=generator.get_params(), seed=int(seed), digest=digest,
                        images=images, masks=masks, sources=sources, sample_params=sample_params,
                        rejected=rejected)
