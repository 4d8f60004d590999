"""The rule that rejects invisible synthetic anomalies, shared by the generators that paste or blend pixels.

A draw is visible when at least `min_changed_pixels` pixels change by more than `min_change` levels. The
count is given for a 256 x 256 image and scales with the image's area; a pixel's change is its largest
absolute difference over R, G and B, so on grey images it is the grey-level change and a shift of colour
alone also counts.
"""

import math

import numpy as np

REFERENCE_AREA = 256 * 256  # the image area `min_changed_pixels` is given for


def changed_pixels(before: np.ndarray, after: np.ndarray, min_change: float, where: np.ndarray | None = None) -> int:
    """Pixels of `after` (uint8 (h, w, 3)) that differ from `before` by more than `min_change` levels, counted
    only where the bool mask `where` is set if it is given."""
    changed = np.abs(after.astype(np.int16) - before).max(axis=2) > min_change
    return int(np.count_nonzero(changed if where is None else changed & where))


def required_changed_pixels(min_changed_pixels: int, image: np.ndarray) -> int:
    """`min_changed_pixels` (given at 256 x 256) for an image of this size."""
    return math.ceil(min_changed_pixels * image.shape[0] * image.shape[1] / REFERENCE_AREA)
