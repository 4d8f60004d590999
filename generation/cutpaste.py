"""CutPaste (Li et al., CVPR 2021): cut a patch from a normal image, jitter its colours, paste it elsewhere.

Variants: "normal" pastes a rectangle; "scar" pastes a thin rectangle rotated by up to `scar_angle` degrees
through its rotated footprint; "union" makes each sample one or the other, 50/50. Sizes are given for a
256 x 256 image and scale with the side of the square of the same area, so a resized image gets the same
shapes. A sample's mask is exactly its paste footprint: 1 where patch pixels were written, 0 elsewhere.

Invisible draws. A patch can land on near-identical texture and change almost nothing (on solar-cell images
15-24% of plain CutPaste samples change fewer than 20 pixels by more than 25 grey levels); such a sample
would be labelled anomalous while looking normal. So a draw is rejected and redrawn when fewer than
`min_changed_pixels` pixels (counted at 256 x 256, scaled with the image area) change by more than
`min_change` levels, a pixel's change being its largest absolute difference over R, G and B: on grey
images that is the grey-level change, and a shift of colour alone also counts. `min_changed_pixels=0`
switches the rule off. A redraw keeps the sample's variant, so union stays 50/50, and draws everything else
again, source image included; after `max_attempts` rejections in a row the generation fails.
"""

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from generation import options
from generation.base import Generator
from generation.color_jitter import apply_jitter, draw_jitter
from generation.registry import register_generator
from generation.synthetic_set import SyntheticSet
from generation.visibility import changed_pixels, generate_visible, rule_options

VARIANTS = ("normal", "scar", "union")
REFERENCE_SIDE = 256  # the image side that sizes and `min_changed_pixels` are given for
MIN_SIDE = 32  # at 1/8 of the reference size a scar is already 1-2 px wide


@register_generator
class CutPaste(Generator):
    """CutPaste anomalies with exact paste masks. See the module docstring for the rejection of invisible draws."""

    name = "cutpaste"

    def __init__(self, *, variant: str = "union", area_ratio: tuple[float, float] = (0.02, 0.15),
                 aspect_ratio: float = 0.3, scar_width: tuple[float, float] = (2.0, 16.0),
                 scar_height: tuple[float, float] = (10.0, 25.0), scar_angle: float = 45.0, jitter: float = 0.1,
                 min_changed_pixels: int = 20, min_change: float = 25.0, max_attempts: int = 50):
        self.variant = options.choice("variant", variant, VARIANTS)
        self.area_ratio = options.interval("area_ratio", area_ratio, high=1.0)
        self.aspect_ratio = options.number("aspect_ratio", aspect_ratio, 0, 1, low_open=True)
        self.scar_width = options.interval("scar_width", scar_width)
        self.scar_height = options.interval("scar_height", scar_height)
        self.scar_angle = options.number("scar_angle", scar_angle, 0, 90)
        self.jitter = options.number("jitter", jitter, 0, 0.5)
        self.min_changed_pixels, self.min_change, self.max_attempts = rule_options(
            min_changed_pixels, min_change, max_attempts)

    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        return generate_visible(self, normal_images, n, seed, self._draw, kinds=self._variants, allow_unchanged=True)

    def _variants(self, rng: np.random.Generator, n: int) -> list[str]:
        if self.variant == "union":
            return [("normal", "scar")[i] for i in rng.integers(2, size=n)]
        return [self.variant] * n

    def _check_images(self, normal_images: Sequence[np.ndarray]) -> None:
        for index, image in enumerate(normal_images):
            height, width = image.shape[:2]
            if min(height, width) < MIN_SIDE:
                raise ValueError(f"normal_images[{index}] is {height}x{width} px: too small for CutPaste, which "
                                 f"needs at least {MIN_SIDE} px a side")
            # a w x h rectangle rotated by up to 90 degrees fits in a (w + h) square; PIL may round up by a pixel
            largest_scar = math.ceil((self.scar_width[1] + self.scar_height[1]) * _scale(image)) + 2
            if largest_scar > min(height, width):
                raise ValueError(f"normal_images[{index}] is {height}x{width} px: too small for rotated scars of up "
                                 f"to {largest_scar} px (scar sizes are given at 256 px and scale with the image)")

    def _draw(self, rng: np.random.Generator, normal_images: Sequence[np.ndarray], source: int,
              variant: str) -> tuple[np.ndarray, np.ndarray, dict, int]:
        image = normal_images[source]
        cut = self._cut_scar if variant == "scar" else self._cut_normal
        patch, footprint, params = cut(rng, image)
        height, width = footprint.shape
        target = _random_box(rng, image, width, height)
        changed = changed_pixels(_crop(image, target), patch, self.min_change, where=footprint)
        output = image.copy()
        _crop(output, target)[footprint] = patch[footprint]
        mask = np.zeros(image.shape[:2], dtype=np.float32)
        _crop(mask, target)[:] = footprint
        params = {"variant": variant, **params, "paste": {"x": target["x"], "y": target["y"]},
                  "changed_pixels": changed}
        return output, mask, params, changed

    def _cut_normal(self, rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        height, width = image.shape[:2]
        area = rng.uniform(*self.area_ratio) * height * width
        aspect = math.exp(rng.uniform(math.log(self.aspect_ratio), -math.log(self.aspect_ratio)))  # width / height
        box = _random_box(rng, image, _clip(math.sqrt(area * aspect), width), _clip(math.sqrt(area / aspect), height))
        jitter = draw_jitter(rng, self.jitter)
        patch = apply_jitter(_crop(image, box), jitter)
        return patch, np.ones(patch.shape[:2], dtype=bool), {"cut": box, "jitter": jitter}

    def _cut_scar(self, rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        height, width = image.shape[:2]
        scale = _scale(image)
        scar_width = _clip(rng.uniform(*self.scar_width) * scale, width)
        scar_height = _clip(rng.uniform(*self.scar_height) * scale, height)
        box = _random_box(rng, image, scar_width, scar_height)
        jitter = draw_jitter(rng, self.jitter)
        angle = float(rng.uniform(-self.scar_angle, self.scar_angle))
        patch, footprint = _rotate_with_footprint(apply_jitter(_crop(image, box), jitter), angle)
        return patch, footprint, {"cut": box, "jitter": jitter, "angle": angle}


def _rotate_with_footprint(patch: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """`patch` rotated by `angle` degrees counter-clockwise on an expanded canvas, and the bool mask of the
    canvas pixels it covers. Nearest-neighbour sampling keeps the footprint binary and the pixels unblended."""
    rotated = Image.fromarray(patch).convert("RGBA").rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    rotated = np.asarray(rotated)
    return rotated[:, :, :3], rotated[:, :, 3] > 0


def _scale(image: np.ndarray) -> float:
    """Side of the square with the image's area, relative to the reference side."""
    return math.sqrt(image.shape[0] * image.shape[1]) / REFERENCE_SIDE


def _clip(length: float, limit: int) -> int:
    return min(max(round(length), 1), limit)


def _random_box(rng: np.random.Generator, image: np.ndarray, width: int, height: int) -> dict:
    x = int(rng.integers(image.shape[1] - width + 1))
    y = int(rng.integers(image.shape[0] - height + 1))
    return {"x": x, "y": y, "width": width, "height": height}


def _crop(image: np.ndarray, box: dict) -> np.ndarray:
    return image[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]]
