import numpy as np
import pytest

from generation import Perlin
from generation.color_jitter import apply_jitter
from generation.perlin import perlin_noise


def _gradient_images(n=4, size=(64, 64)):
    """Smooth, distinct images: any foreign texture blended in is visible."""
    y, x = np.mgrid[:size[0], :size[1]]
    return [np.stack([(x * 4 + 40 * i) % 256, (y * 4) % 256, np.full(size, 60 * i)], axis=-1).astype(np.uint8)
            for i in range(n)]


def test_noise_is_bounded_smooth_and_zero_on_the_lattice():
    noise = perlin_noise(64, 64, (4, 4), np.random.default_rng(0))
    assert noise.shape == (64, 64) and np.abs(noise).max() <= 1
    assert np.allclose(noise[::16, ::16], 0)  # gradient noise vanishes at lattice points
    assert np.abs(np.diff(noise, axis=0)).max() < 0.25  # 16 px cells: no jumps between neighbours


def test_masks_are_exactly_where_the_texture_was_blended():
    normals = _gradient_images()
    synthetic = Perlin().generate(normals, 12, seed=3)
    for image, mask, source, params in zip(synthetic.images, synthetic.masks, synthetic.sources,
                                           synthetic.sample_params):
        outside = mask == 0
        assert np.array_equal(image[outside], normals[source][outside])
        assert 0 < mask.mean() < 1 and set(np.unique(mask)) <= {0.0, 1.0}
        texture = np.rot90(normals[params["texture"]], params["quarter_turns"])
        texture = apply_jitter(np.ascontiguousarray(texture[:, ::-1] if params["flip"] else texture), params["jitter"])
        kept = params["opacity_kept"]
        expected = np.rint(kept * normals[source] + (1 - kept) * texture.astype(float)).astype(np.uint8)
        assert np.abs(image[~outside].astype(int) - expected[~outside]).max() <= 1


def test_invisible_draws_are_redrawn_and_a_hopeless_request_fails_clearly():
    flat = [np.full((64, 64, 3), 128, np.uint8)] * 3  # unjittered texture from a flat image changes nothing
    with pytest.raises(ValueError, match="no visible anomaly"):
        Perlin(texture_jitter=0, max_attempts=5).generate(flat, 2, seed=0)
    normals = _gradient_images()
    synthetic = Perlin(min_changed_pixels=2000).generate(normals, 10, seed=0)
    assert synthetic.rejected > 0
    for image, source in zip(synthetic.images, synthetic.sources):
        changed = np.abs(image.astype(int) - normals[source]).max(axis=2) > 25
        assert changed.sum() >= 2000 * 64 * 64 / 256 ** 2


def test_bad_settings_and_mixed_sizes_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        Perlin(threshold=1.5)
    with pytest.raises(ValueError, match="scale_exponents"):
        Perlin(scale_exponents=(3, 2))
    mixed = _gradient_images(2) + _gradient_images(1, size=(64, 80))
    with pytest.raises(ValueError, match="share a size"):
        Perlin().generate(mixed, 2, seed=0)
