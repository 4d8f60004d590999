"""Anomaly maps at the image's size from scores on a backbone's feature grid, shared by the detectors that
localise: bilinear to the network's input, Gaussian sigma MAP_SIGMA there, bilinear to the image.

Sigma is PatchCore's 4 px at its 224 px network input: half a stride-8 feature cell, the same whatever the
image's size (see detectors/patchcore.py for why it is applied at the input rather than the image resolution).
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

MAP_SIGMA = 4.0  # px at the backbone's input resolution


def anomaly_maps(patch_scores: torch.Tensor, input_size: int, image_size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) float32 maps from (N, h, w) patch scores: bilinear to input_size x input_size, Gaussian
    sigma MAP_SIGMA there, bilinear to the image size (H, W)."""
    grid = patch_scores[:, None].float()
    grid = F.interpolate(grid, size=(input_size, input_size), mode="bilinear", align_corners=False)
    smoothed = gaussian_filter(grid[:, 0].numpy(), sigma=(0, MAP_SIGMA, MAP_SIGMA), mode="reflect", truncate=4.0)
    maps = F.interpolate(torch.from_numpy(smoothed)[:, None], size=tuple(image_size), mode="bilinear",
                         align_corners=False)
    return np.ascontiguousarray(maps[:, 0].numpy(), dtype=np.float32)


def check_one_size(images: list[np.ndarray]) -> None:
    """Maps of several images come out as one (N, H, W) array: refuse images of different sizes."""
    sizes = sorted({tuple(np.shape(image)[:2]) for image in images})
    if len(sizes) > 1:
        raise ValueError(f"anomaly maps need images of one size, got sizes {', '.join(map(str, sizes))}")


class ScoresAndMaps:
    """`anomaly_scores` and `anomaly_maps` for a detector whose `scores_and_maps(images, maps)` computes both
    from one pass: (N,) scores, higher = more anomalous; (N, H, W) float32 maps at the images' shared size."""

    def anomaly_scores(self, images) -> np.ndarray:
        return self.scores_and_maps(images, maps=False)[0]

    def anomaly_maps(self, images) -> np.ndarray:
        return self.scores_and_maps(images, maps=True)[1]
