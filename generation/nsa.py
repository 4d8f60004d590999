"""NSA-style anomalies (after Natural Synthetic Anomalies, Schlüter et al., ECCV 2022): a patch of one normal
image blended seamlessly into another by Poisson image editing (Pérez et al., SIGGRAPH 2003).

A sample draws a destination image and a different source image of the seed set (the same one only when
there is a single seed image), then a rectangle Omega of the destination: its area is U(`area_ratio`) of the
image, its aspect ratio (width / height) log-uniform in [`aspect_ratio`, 1 / `aspect_ratio`], its sides
clipped so that a 1 px ring of the destination stays around it (the Dirichlet boundary of the blend). The
guide is the (h + 2) x (w + 2) window of Omega and its ring: a region of round((h + 2) / s) x round((w + 2) / s)
px of the source image (clipped to the image), s ~ U(`resize`), resized bilinearly (PIL) to the window's size;
`resize=(1, 1)` cuts it at its own size. Source and destination locations are uniform over the valid ones.

The blend solves, per RGB channel, the discrete Poisson equation of the rectangle: the values f inside Omega
minimise the sum over pixel pairs (p, q), p in Omega and q a 4-neighbour, of (f_p - f_q - v_pq)^2, with f_q
the destination's value when q lies on the ring and v_pq = g_p - g_q the gradient of the guide g. With
`mixed=True` each pair (and channel: the channels are solved independently) takes the destination's
gradient instead where that one is larger in magnitude ("mixed gradients"), so strong destination structure
shows through. The 5-point Laplacian of the rectangle is factorised once per sample (sparse LU) and solved
for the three channels; the result is clipped to [0, 255] and rounded.

Poisson blending changes a pixel of Omega by anything from nothing to a lot, so the mask is not the
rectangle: it is exactly the changed pixels of the blend, those of Omega whose largest absolute RGB
difference from the destination exceeds `min_change` levels (the measure of `generation.visibility`).
Pixels outside Omega are never touched. Invisible draws are rejected and redrawn by the rule CutPaste and
Perlin use (`generation.visibility`); a draw that changes nothing is rejected even with
`min_changed_pixels=0`.
"""

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from PIL import Image

from generation import options
from generation.base import Generator, check_one_size
from generation.registry import register_generator
from generation.synthetic_set import SyntheticSet
from generation.visibility import changed_mask, generate_visible, rule_options

MIN_SIDE = 16  # px a side at least: below that a patch with its 1 px ring is a handful of pixels


def poisson_blend(destination: np.ndarray, guide: np.ndarray, top: int, left: int,
                  mixed: bool = False) -> np.ndarray:
    """The Poisson solution (float64 (h, w, 3), neither clipped nor rounded) inside the h x w rectangle of
    `destination` whose top-left pixel is (`top`, `left`), guided by the gradients of `guide`
    ((h + 2, w + 2, 3): the rectangle and its 1 px ring). The ring of `destination` is the boundary, so the
    rectangle must keep 1 px of `destination` on every side."""
    height, width = guide.shape[0] - 2, guide.shape[1] - 2
    if height < 1 or width < 1 or top < 1 or left < 1 or top + height + 1 > destination.shape[0] \
            or left + width + 1 > destination.shape[1]:
        raise ValueError(f"a {height}x{width} rectangle at ({top}, {left}) leaves no 1 px ring inside a "
                         f"{destination.shape[0]}x{destination.shape[1]} destination")
    g = guide.astype(np.float64)
    d = destination[top - 1:top + height + 1, left - 1:left + width + 1].astype(np.float64)
    inner = (slice(1, -1), slice(1, -1))
    neighbours = ((slice(0, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
                  (slice(1, -1), slice(0, -2)), (slice(1, -1), slice(2, None)))
    rhs = np.zeros((height, width, 3))
    for neighbour in neighbours:
        guidance = g[inner] - g[neighbour]
        if mixed:
            own = d[inner] - d[neighbour]
            guidance = np.where(np.abs(own) > np.abs(guidance), own, guidance)
        rhs += guidance
    # the ring: known values move to the right-hand side
    rhs[0] += d[0, 1:-1]
    rhs[-1] += d[-1, 1:-1]
    rhs[:, 0] += d[1:-1, 0]
    rhs[:, -1] += d[1:-1, -1]
    solve = scipy.sparse.linalg.splu(_dirichlet_laplacian(height, width)).solve
    return solve(rhs.reshape(height * width, 3)).reshape(height, width, 3)


def _dirichlet_laplacian(height: int, width: int) -> scipy.sparse.csc_matrix:
    """The negative 5-point Laplacian of a height x width rectangle (row-major unknowns, 4 on the diagonal,
    -1 between 4-neighbours inside it): the ring's terms are on the right-hand side."""

    def second_difference(n: int) -> scipy.sparse.dia_matrix:
        return scipy.sparse.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])

    return (scipy.sparse.kron(scipy.sparse.identity(height), second_difference(width))
            + scipy.sparse.kron(second_difference(height), scipy.sparse.identity(width))).tocsc()


@register_generator
class NSA(Generator):
    """Poisson-blended patches of another normal image, masked where the blend changed pixels. See the module
    docstring."""

    name = "nsa"

    def __init__(self, *, area_ratio: tuple[float, float] = (0.01, 0.10), aspect_ratio: float = 0.3,
                 resize: tuple[float, float] = (0.7, 1.3), mixed: bool = False, min_changed_pixels: int = 20,
                 min_change: float = 25.0, max_attempts: int = 50):
        self.area_ratio = options.interval("area_ratio", area_ratio, high=1.0)
        self.aspect_ratio = options.number("aspect_ratio", aspect_ratio, 0, 1, low_open=True)
        self.resize = options.interval("resize", resize)
        self.mixed = options.flag("mixed", mixed)
        self.min_changed_pixels, self.min_change, self.max_attempts = rule_options(
            min_changed_pixels, min_change, max_attempts)

    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        return generate_visible(self, normal_images, n, seed, self._draw)

    def _check_images(self, normal_images: Sequence[np.ndarray]) -> None:
        check_one_size(normal_images, MIN_SIDE, "NSA")

    def _draw(self, rng: np.random.Generator, normal_images: Sequence[np.ndarray], destination: int,
              kind: None) -> tuple[np.ndarray, np.ndarray, dict, int]:
        count = len(normal_images)
        source = 0
        if count > 1:  # any image but the destination
            source = int(rng.integers(count - 1))
            source += source >= destination
        base = normal_images[destination]
        image_height, image_width = base.shape[:2]
        area = rng.uniform(*self.area_ratio) * image_height * image_width
        aspect = math.exp(rng.uniform(math.log(self.aspect_ratio), -math.log(self.aspect_ratio)))  # width / height
        width = min(max(round(math.sqrt(area * aspect)), 1), image_width - 2)
        height = min(max(round(math.sqrt(area / aspect)), 1), image_height - 2)
        scale = float(rng.uniform(*self.resize))
        cut_height = min(max(round((height + 2) / scale), 1), image_height)
        cut_width = min(max(round((width + 2) / scale), 1), image_width)
        cut_y = int(rng.integers(image_height - cut_height + 1))
        cut_x = int(rng.integers(image_width - cut_width + 1))
        top = int(rng.integers(1, image_height - height))  # 1 .. image_height - height - 1: a ring on every side
        left = int(rng.integers(1, image_width - width))
        guide = normal_images[source][cut_y:cut_y + cut_height, cut_x:cut_x + cut_width]
        if guide.shape[:2] != (height + 2, width + 2):
            guide = np.asarray(Image.fromarray(guide).resize((width + 2, height + 2), Image.Resampling.BILINEAR))
        blended = poisson_blend(base, guide, top, left, self.mixed)
        image = base.copy()
        image[top:top + height, left:left + width] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        mask = changed_mask(base, image, self.min_change)  # nothing outside the rectangle changed
        changed = int(np.count_nonzero(mask))
        params = {"source": source,
                  "destination_box": {"x": left, "y": top, "width": width, "height": height},
                  "source_box": {"x": cut_x, "y": cut_y, "width": cut_width, "height": cut_height},
                  "scale": scale, "mixed": self.mixed, "changed_pixels": changed}
        return image, mask.astype(np.float32), params, changed
