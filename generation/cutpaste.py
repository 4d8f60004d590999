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
from dataclasses import dataclass

import numpy as np
from PIL import Image

from generation.base import Generator
from generation.color_jitter import apply_jitter, draw_jitter
from generation.registry import register_generator
from generation.synthetic_set import SyntheticSet
from generation.visibility import changed_pixels, required_changed_pixels

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
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.area_ratio = _interval("area_ratio", area_ratio, high=1.0)
        self.aspect_ratio = _number("aspect_ratio", aspect_ratio, 0.0, 1.0, "in (0, 1]; the ratio is log-uniform "
                                    "in [aspect_ratio, 1 / aspect_ratio]")
        self.scar_width = _interval("scar_width", scar_width)
        self.scar_height = _interval("scar_height", scar_height)
        self.scar_angle = _number("scar_angle", scar_angle, 0.0, 90.0, "in [0, 90] degrees", low_inclusive=True)
        self.jitter = _number("jitter", jitter, 0.0, 0.5, "in [0, 0.5]", low_inclusive=True)
        self.min_changed_pixels = _count("min_changed_pixels", min_changed_pixels, minimum=0)
        self.min_change = _number("min_change", min_change, 0.0, 254.0, "in [0, 254] levels", low_inclusive=True)
        self.max_attempts = _count("max_attempts", max_attempts, minimum=1)

    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        digest = self.digest(normal_images, n, seed)
        rng = np.random.default_rng(seed)
        if self.variant == "union":
            variants = [("normal", "scar")[i] for i in rng.integers(2, size=n)]
        else:
            variants = [self.variant] * n
        images, masks, sources, sample_params = [], [], [], []
        rejected = 0
        for index, variant in enumerate(variants):
            for _ in range(self.max_attempts):
                source = int(rng.integers(len(normal_images)))
                draw = self._draw(rng, normal_images[source], variant)
                if draw.changed_pixels >= required_changed_pixels(self.min_changed_pixels, normal_images[source]):
                    break
                rejected += 1
            else:
                raise ValueError(
                    f"CutPaste found no visible {variant} patch for sample {index}: {self.max_attempts} draws in a "
                    f"row changed fewer than {self.min_changed_pixels} pixels (at 256 x 256) by more than "
                    f"{self.min_change:g} levels; the images are too uniform for this rule. Lower min_changed_pixels "
                    f"or min_change, or pass min_changed_pixels=0 to switch the rule off")
            image, mask = draw.paste(normal_images[source])
            images.append(image)
            masks.append(mask)
            sources.append(source)
            sample_params.append(draw.params)
        return SyntheticSet(generator=self.name, params=self.get_params(), seed=int(seed), digest=digest,
                            images=images, masks=masks, sources=sources, sample_params=sample_params,
                            rejected=rejected)

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

    def _draw(self, rng: np.random.Generator, image: np.ndarray, variant: str) -> "_Draw":
        cut = self._cut_scar if variant == "scar" else self._cut_normal
        patch, footprint, params = cut(rng, image)
        height, width = footprint.shape
        target = _random_box(rng, image, width, height)
        x, y = target["x"], target["y"]
        changed = changed_pixels(_crop(image, target), patch, self.min_change, where=footprint)
        params = {"variant": variant, **params, "paste": {"x": x, "y": y}, "changed_pixels": changed}
        return _Draw(patch, footprint, x, y, changed, params)

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


@dataclass(frozen=True)
class _Draw:
    patch: np.ndarray
    footprint: np.ndarray
    x: int
    y: int
    changed_pixels: int
    params: dict

    def paste(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`image` with the patch written over its footprint, and the footprint as a float32 mask."""
        height, width = self.footprint.shape
        output = image.copy()
        output[self.y:self.y + height, self.x:self.x + width][self.footprint] = self.patch[self.footprint]
        mask = np.zeros(image.shape[:2], dtype=np.float32)
        mask[self.y:self.y + height, self.x:self.x + width] = self.footprint
        return output, mask


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


def _interval(name: str, value, high: float = math.inf) -> tuple[float, float]:
    try:
        low_end, high_end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not 0 < low_end <= high_end <= high:
        raise ValueError(f"{name} must satisfy 0 < low <= high <= {high:g}, got {value!r}")
    return low_end, high_end


def _number(name: str, value, low: float, high: float, expected: str, low_inclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number {expected}, got {value!r}")
    if not (low <= value if low_inclusive else low < value) or value > high:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
