"""Perlin-noise texture anomalies (after DRAEM, Zavrtanik et al., ICCV 2021).

A sample is a normal image with irregular blobs of foreign texture blended in. The blobs are where 2-D Perlin
noise exceeds `threshold`; the noise lattice has 2^a x 2^b cells, a and b drawn from `scale_exponents`
(capped so that a cell is at least `MIN_CELL` pixels). DRAEM takes the texture from an external texture
data set; offline we have none, so the texture is another normal image of the seed set, flipped, rotated by
a multiple of 90 degrees and colour-jittered with `texture_jitter`: foreign material of the same domain. The
blend keeps a fraction beta ~ U(0, `max_opacity_kept`) of the original inside the blobs:

    out = (1 - M) * image + M * (beta * image + (1 - beta) * texture)

The mask M is exact (1 inside the blobs). Invisible draws are rejected and redrawn by the rule CutPaste uses
(`generation.visibility`); a draw that changes nothing is rejected even with `min_changed_pixels=0`.
"""

import math
from collections.abc import Sequence

import numpy as np

from generation import options
from generation.base import Generator, check_one_size
from generation.color_jitter import apply_jitter, draw_jitter
from generation.registry import register_generator
from generation.synthetic_set import SyntheticSet
from generation.visibility import changed_pixels, generate_visible, rule_options

MIN_CELL = 4  # pixels per noise cell at least: finer lattices alias into salt-and-pepper noise


def perlin_noise(height: int, width: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(height, width) gradient noise over a lattice of `cells` = (rows, columns) cells, scaled by sqrt(2) to
    lie in [-1, 1]: random unit gradients at the lattice points, quintic fade between them."""
    rows, columns = cells
    angles = rng.uniform(0, 2 * np.pi, (rows + 1, columns + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(height) * rows / height
    x = np.arange(width) * columns / width
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[iy[:, None] + dy, ix[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (6 * t - 15) + 10)

    top = corner(0, 0) + fade(fx) * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + fade(fx) * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2) * (top + fade(fy) * (bottom - top))


@register_generator
class Perlin(Generator):
    """Perlin-noise blobs of foreign texture blended into normal images. See the module docstring."""

    name = "perlin"

    def __init__(self, *, scale_exponents: tuple[int, int] = (0, 6), threshold: float = 0.5,
                 max_opacity_kept: float = 0.8, texture_jitter: float = 0.5, min_changed_pixels: int = 20,
                 min_change: float = 25.0, max_attempts: int = 50):
        self.scale_exponents = options.integer_range("scale_exponents", scale_exponents)
        self.threshold = options.number("threshold", threshold, 0, 1, low_open=True, high_open=True)
        self.max_opacity_kept = options.number("max_opacity_kept", max_opacity_kept, 0, 1, high_open=True)
        self.texture_jitter = options.number("texture_jitter", texture_jitter, 0, 0.5)
        self.min_changed_pixels, self.min_change, self.max_attempts = rule_options(
            min_changed_pixels, min_change, max_attempts)

    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        return generate_visible(self, normal_images, n, seed, self._draw)

    def _check_images(self, normal_images: Sequence[np.ndarray]) -> None:
        check_one_size(normal_images, 2 * MIN_CELL, "Perlin")

    def _draw(self, rng: np.random.Generator, normal_images: Sequence[np.ndarray], source: int,
              kind: None) -> tuple[np.ndarray, np.ndarray, dict, int]:
        image = normal_images[source]
        height, width = image.shape[:2]
        low, high = self.scale_exponents
        cells = tuple(min(2 ** int(rng.integers(low, high)), max(side // MIN_CELL, 1)) for side in (height, width))
        mask = (perlin_noise(height, width, cells, rng) > self.threshold).astype(np.float32)
        texture_index = int(rng.integers(len(normal_images)))
        turns = int(rng.integers(4)) if height == width else 2 * int(rng.integers(2))  # keep the shape
        flip = bool(rng.integers(2))
        jitter = draw_jitter(rng, self.texture_jitter)
        texture = np.rot90(normal_images[texture_index], turns)
        texture = apply_jitter(np.ascontiguousarray(texture[:, ::-1] if flip else texture), jitter)
        kept = float(rng.uniform(0, self.max_opacity_kept))
        inside = mask[:, :, None]
        blended = image * (1 - inside) + inside * (kept * image + (1 - kept) * texture)
        params = {"cells": list(cells), "texture": texture_index, "quarter_turns": turns, "flip": flip,
                  "jitter": jitter, "opacity_kept": kept}
        output = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return output, mask, params, changed_pixels(image, output, self.min_change)
