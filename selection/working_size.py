"""One working size for a task whose images differ in size. Generators blend one normal image into another
and anomaly maps of a set stack into one array, so every image of a selection is brought to the support
set's most common size (the largest of equally common ones), masks with their images, and the selection
says how many images it resized."""

from collections import Counter

import numpy as np

from detectors.images import resize_image


def working_size(images: list[np.ndarray]) -> tuple[int, int]:
    """(H, W): the most common size among `images`, the largest area where several are equally common."""
    counts = Counter(image.shape[:2] for image in images)
    return max(counts, key=lambda size: (counts[size], size[0] * size[1]))


def to_working_size(images: list[np.ndarray], size: tuple[int, int], what: str) -> tuple[list[np.ndarray], list[str]]:
    """The images at `size`, and a note for the selection's warnings where any had to be resized."""
    resized = [resize_image(image, size) for image in images]
    changed = sum(image.shape[:2] != tuple(size) for image in images)
    if not changed:
        return resized, []
    sizes = len({image.shape[:2] for image in images})
    return resized, [f"{changed} of {len(images)} {what} resized to {size[1]}x{size[0]} px, the support set's most "
                     f"common size ({sizes} sizes among them)"]
