"""The rule that rejects invisible synthetic anomalies, shared by the generators that paste or blend pixels,
and their draw-until-visible loop (CutPaste, Perlin, NSA).

A draw is visible when at least `min_changed_pixels` pixels change by more than `min_change` levels. The
count is given for a 256 x 256 image and scales with the image's area; a pixel's change is its largest
absolute difference over R, G and B, so on grey images it is the grey-level change and a shift of colour
alone also counts.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from generation import options
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


def rule_options(min_changed_pixels, min_change, max_attempts) -> tuple[int, float, int]:
    """The rule's options of a generator, validated: `min_changed_pixels` (at 256 x 256), `min_change` (levels)
    and `max_attempts` (invisible draws in a row before `generate_visible` gives up)."""
    return (options.integer("min_changed_pixels", min_changed_pixels, minimum=0),
            options.number("min_change", min_change, 0, 254),
            options.integer("max_attempts", max_attempts, minimum=1))


def generate_visible(generator, normal_images: Sequence[np.ndarray], n: int, seed: int,
                     draw: Callable[[np.random.Generator, Sequence[np.ndarray], int, Any],
                                    tuple[np.ndarray, np.ndarray, dict, int]],
                     kinds: Callable[[np.random.Generator, int], Sequence] | None = None,
                     allow_unchanged: bool = False) -> SyntheticSet:
    """`n` samples of `generator`: each `draw(rng, normal_images, source, kind)` -> (image, mask, params, changed)
    on a normal image `source` drawn at random, `changed` being how many pixels it changed by more than the
    generator's `min_change` (the count of `changed_pixels`). A draw is redrawn (source included) while it
    changed fewer than the generator's `min_changed_pixels`, and at least one unless `allow_unchanged`
    (then `min_changed_pixels=0` switches the rule off); a ValueError after `max_attempts` invisible draws
    in a row.

    `kinds(rng, n)`, if given, is called once before the first draw and gives each sample a kind that all its
    draws keep (CutPaste's variants); without it every kind is None.
    """
    digest = generator.digest(normal_images, n, seed)
    rng = np.random.default_rng(seed)
    sample_kinds = [None] * n if kinds is None else kinds(rng, n)
    images, masks, sources, sample_params = [], [], [], []
    rejected = 0
    for index, kind in enumerate(sample_kinds):
        for _ in range(generator.max_attempts):
            source = int(rng.integers(len(normal_images)))
            image, mask, params, changed = draw(rng, normal_images, source, kind)
            needed = required_changed_pixels(generator.min_changed_pixels, image)
            if changed >= (needed if allow_unchanged else max(needed, 1)):
                break
            rejected += 1
        else:
            fewer = (f"fewer than {generator.min_changed_pixels} pixels (at 256 x 256)" if generator.min_changed_pixels
                     else "no pixel")
            switch_off = ", or pass min_changed_pixels=0 to switch the rule off" if allow_unchanged else ""
            raise ValueError(f"{type(generator).__name__} found no visible anomaly for sample {index}: "
                             f"{generator.max_attempts} draws in a row changed {fewer} by more than "
                             f"{generator.min_change:g} levels; the images are too uniform for this rule. Lower "
                             f"min_changed_pixels or min_change{switch_off}")
        images.append(image)
        masks.append(mask)
        sources.append(source)
        sample_params.append(params)
    return SyntheticSet(generator=generator.name, params=generator.get_params(), seed=int(seed), digest=digest,
                        images=images, masks=masks, sources=sources, sample_params=sample_params,
                        rejected=rejected)
