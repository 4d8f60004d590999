"""Colour jitter of an RGB patch: brightness, contrast, saturation and hue, applied in a random order.

The same recipe as torchvision's ColorJitter on PIL images, without torchvision: brightness, contrast and
saturation factors are drawn from U(1 - s, 1 + s) and the hue shift from U(-s, s) of the hue circle.
A jitter is drawn once as a JSON-serialisable dict, so a sample records exactly what was applied to it.
"""

import numpy as np
from PIL import Image, ImageEnhance

OPERATIONS = ("brightness", "contrast", "saturation", "hue")


def draw_jitter(rng: np.random.Generator, strength: float) -> dict:
    """Factors for each operation and the order to apply them in, for a jitter of `strength` (0 to 0.5)."""
    jitter = {operation: float(rng.uniform(1 - strength, 1 + strength)) for operation in OPERATIONS[:3]}
    jitter["hue"] = float(rng.uniform(-strength, strength))
    jitter["order"] = [OPERATIONS[i] for i in rng.permutation(len(OPERATIONS))]
    return jitter


def apply_jitter(patch: np.ndarray, jitter: dict) -> np.ndarray:
    """`patch` (uint8 (h, w, 3)) with the operations of `jitter` applied in its order."""
    image = Image.fromarray(patch)
    for operation in jitter["order"]:
        image = _ADJUST[operation](image, jitter[operation])
    return np.asarray(image)


def _shift_hue(image: Image.Image, fraction: float) -> Image.Image:
    shift = round(fraction * 255)  # PIL's HSV hue runs over 0..255
    if shift == 0:
        return image  # the HSV round trip is lossy: skip it when it would change nothing else
    hue, saturation, value = image.convert("HSV").split()
    hue = hue.point(lambda h: (h + shift) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


_ADJUST = {
    "brightness": lambda image, factor: ImageEnhance.Brightness(image).enhance(factor),
    "contrast": lambda image, factor: ImageEnhance.Contrast(image).enhance(factor),
    "saturation": lambda image, factor: ImageEnhance.Color(image).enhance(factor),
    "hue": _shift_hue,
}
