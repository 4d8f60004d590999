import json

import numpy as np
import pytest
from PIL import Image

from generation import NSA, create_generator
from generation.nsa import poisson_blend
from generation.visibility import changed_pixels, required_changed_pixels


def _striped_images(n=4, size=(64, 64)):
    """Distinct sinusoidal textures: their Laplacian is far from zero, so a blended patch is visible."""
    y, x = np.mgrid[:size[0], :size[1]].astype(float)
    return [np.stack([128 + 100 * np.sin(x / (2 + i) + y / (3 + i) + phase) for phase in (0, 1, 2)],
                     axis=-1).astype(np.uint8) for i in range(n)]


def _laplacian(values):
    """4 * centre - the 4 neighbours, on the interior of a (h + 2, w + 2, 3) window."""
    return (4 * values[1:-1, 1:-1] - values[:-2, 1:-1] - values[2:, 1:-1] - values[1:-1, :-2] - values[1:-1, 2:])


def _crop(image, box):
    return image[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]]


def _expected_blend(normals, destination, params):
    """The sample redone from its recorded parameters alone."""
    box = params["destination_box"]
    guide = _crop(normals[params["source"]], params["source_box"])
    if guide.shape[:2] != (box["height"] + 2, box["width"] + 2):
        guide = np.asarray(Image.fromarray(guide).resize((box["width"] + 2, box["height"] + 2),
                                                         Image.Resampling.BILINEAR))
    blended = poisson_blend(normals[destination], guide, box["y"], box["x"], params["mixed"])
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _assert_samples_are_consistent(synthetic, normals, min_change=25.0):
    height, width = normals[0].shape[:2]
    for image, mask, destination, params in zip(synthetic.images, synthetic.masks, synthetic.sources,
                                                synthetic.sample_params):
        box = params["destination_box"]
        assert params["source"] != destination or len(normals) == 1
        assert box["x"] >= 1 and box["y"] >= 1 and box["x"] + box["width"] <= width - 1 \
            and box["y"] + box["height"] <= height - 1  # a 1 px ring of the destination is left
        cut = params["source_box"]  # the ring-padded window at 1 / scale of its size, within the source image
        assert (cut["height"], cut["width"]) == (min(round((box["height"] + 2) / params["scale"]), height),
                                                 min(round((box["width"] + 2) / params["scale"]), width))
        assert 0 <= cut["x"] <= width - cut["width"] and 0 <= cut["y"] <= height - cut["height"]
        inside = np.zeros((height, width), dtype=bool)
        inside[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]] = True
        assert np.array_equal(image[~inside], normals[destination][~inside])
        assert np.array_equal(_crop(image, box), _expected_blend(normals, destination, params))
        changed = np.abs(image.astype(int) - normals[destination]).max(axis=2) > min_change
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        assert np.array_equal(mask > 0, changed & inside)
        assert mask.sum() == params["changed_pixels"] == changed_pixels(normals[destination], image, min_change) > 0


def test_same_seed_same_set_and_another_seed_another():
    normals = _striped_images()
    first, second = NSA().generate(normals, 6, seed=5), NSA().generate(normals, 6, seed=5)
    assert [image.tobytes() for image in first.images] == [image.tobytes() for image in second.images]
    assert [mask.tobytes() for mask in first.masks] == [mask.tobytes() for mask in second.masks]
    assert first.sample_params == second.sample_params and first.sources == second.sources
    other = NSA().generate(normals, 6, seed=6)
    assert other.sample_params != first.sample_params
    assert any(not np.array_equal(a, b) for a, b in zip(first.images, other.images))


@pytest.mark.parametrize("params", [{}, {"mixed": True}, {"resize": (1.0, 1.0)}, {"area_ratio": (0.2, 0.5)}])
def test_masks_are_the_changed_pixels_of_the_blended_box_and_nothing_else_moves(params):
    normals = _striped_images()
    synthetic = NSA(**params).generate(normals, 10, seed=1)
    _assert_samples_are_consistent(synthetic, normals)
    json.dumps(synthetic.sample_params)
    assert all(p["mixed"] == params.get("mixed", False) for p in synthetic.sample_params)
    if "resize" in params:
        assert all(p["source_box"]["width"] == p["destination_box"]["width"] + 2 for p in synthetic.sample_params)
    else:
        assert len({p["source_box"]["width"] - p["destination_box"]["width"] for p in synthetic.sample_params}) > 1


def test_a_single_seed_image_is_its_own_source():
    normals = _striped_images(1)
    synthetic = NSA().generate(normals, 4, seed=0)
    assert synthetic.sources == [0] * 4 and all(p["source"] == 0 for p in synthetic.sample_params)
    _assert_samples_are_consistent(synthetic, normals)


@pytest.mark.parametrize("mixed", [False, True])
def test_a_guide_offset_by_a_constant_gives_back_the_destination(mixed):
    destination = np.random.default_rng(0).integers(40, 200, (20, 24, 3), dtype=np.uint8)
    guide = destination[3:15, 5:21] + np.uint8(50)  # the 10 x 14 rectangle at (4, 6) and its ring
    blended = poisson_blend(destination, guide, 4, 6, mixed)
    assert blended.shape == (10, 14, 3)
    assert np.allclose(blended, destination[4:14, 6:20], atol=1e-6)  # same gradients, same boundary


def test_the_laplacian_of_the_result_is_the_laplacian_of_the_guide():
    rng = np.random.default_rng(1)
    destination = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    guide = rng.integers(0, 256, (17, 29, 3), dtype=np.uint8)
    blended = poisson_blend(destination, guide, 7, 9)
    window = destination[6:23, 8:37].astype(float)
    window[1:-1, 1:-1] = blended
    assert np.allclose(_laplacian(window), _laplacian(guide.astype(float)), atol=1e-8)
    assert np.ptp(blended) > 255  # unclipped: the clipping is the generator's


def test_linear_ramps_carry_no_divergence():
    y, x = np.mgrid[:24, :24].astype(float)
    destination = np.stack([40 + 3 * x, 20 + 2 * y, 100 + x + y], axis=-1).astype(np.uint8)
    guide = np.stack([200 - 5 * y, 7 * x, np.full_like(x, 9)], axis=-1)[:14, :12].astype(np.uint8)
    # a ramp guide has a zero Laplacian, so the result is harmonic: the destination's own ramp
    assert np.allclose(poisson_blend(destination, guide, 5, 6), destination[5:17, 6:16], atol=1e-6)


def test_mixed_gradients_keep_the_stronger_destination_structure():
    rng = np.random.default_rng(2)
    destination = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    flat = np.full((12, 12, 3), 90, np.uint8)
    assert np.allclose(poisson_blend(destination, flat, 4, 4, mixed=True), destination[4:14, 4:14], atol=1e-6)
    membrane = poisson_blend(destination, flat, 4, 4, mixed=False)  # no guidance: the smoothest fill
    window = destination[3:15, 3:15].astype(float)
    window[1:-1, 1:-1] = membrane
    assert np.allclose(_laplacian(window), 0, atol=1e-8) and membrane.std() < destination.std()


def test_a_rectangle_without_a_ring_is_refused():
    destination = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="ring"):
        poisson_blend(destination, np.zeros((5, 5, 3), np.uint8), 0, 3)
    with pytest.raises(ValueError, match="ring"):
        poisson_blend(destination, np.zeros((5, 5, 3), np.uint8), 3, 7)


def test_invisible_draws_are_redrawn_and_a_hopeless_request_fails_clearly():
    flat = [np.full((64, 64, 3), 128, np.uint8)] * 3  # flat into flat: the blend changes nothing
    with pytest.raises(ValueError, match="NSA found no visible anomaly for sample 0: 5 draws in a row changed no pixel"):
        NSA(min_changed_pixels=0, max_attempts=5).generate(flat, 2, seed=0)
    normals = _striped_images()
    synthetic = NSA(min_changed_pixels=2000).generate(normals, 10, seed=0)
    assert synthetic.rejected > 0
    for image, source in zip(synthetic.images, synthetic.sources):
        assert changed_pixels(normals[source], image, 25.0) >= required_changed_pixels(2000, image)


@pytest.mark.parametrize("params, name", [
    ({"area_ratio": (0.2, 0.1)}, "area_ratio"),
    ({"area_ratio": (0.0, 0.1)}, "area_ratio"),
    ({"area_ratio": (0.1, 1.5)}, "area_ratio"),
    ({"area_ratio": 0.1}, "area_ratio"),
    ({"aspect_ratio": 0}, "aspect_ratio"),
    ({"aspect_ratio": 1.5}, "aspect_ratio"),
    ({"resize": (1.3, 0.7)}, "resize"),
    ({"resize": ("a", 1)}, "resize"),
    ({"mixed": "yes"}, "mixed"),
    ({"min_changed_pixels": -1}, "min_changed_pixels"),
    ({"min_change": 300}, "min_change"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_bad_settings_are_refused_by_name(params, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        NSA(**params)


def test_mixed_sizes_and_tiny_images_are_refused():
    mixed = _striped_images(2) + _striped_images(1, size=(64, 80))
    with pytest.raises(ValueError, match="share a size"):
        NSA().generate(mixed, 2, seed=0)
    with pytest.raises(ValueError, match="12x20 px: too small"):
        NSA().digest(_striped_images(2, size=(12, 20)), 2, seed=0)
    NSA().generate(_striped_images(2, size=(16, 16)), 2, seed=0)  # the smallest accepted size works


def test_registered_with_its_defaults():
    generator = create_generator("nsa")
    assert isinstance(generator, NSA)
    assert generator.get_params() == {"area_ratio": (0.01, 0.1), "aspect_ratio": 0.3, "resize": (0.7, 1.3),
                                      "mixed": False, "min_changed_pixels": 20, "min_change": 25.0,
                                      "max_attempts": 50}


def test_real_bottle_images(mvtec_root):
    paths = sorted((mvtec_root / "bottle" / "train" / "good").glob("*.png"))[:10]
    normals = [np.asarray(Image.open(path).convert("RGB").resize((128, 128), Image.Resampling.BILINEAR))
               for path in paths]
    synthetic = NSA().generate(normals, 20, seed=0)
    _assert_samples_are_consistent(synthetic, normals)
    assert synthetic.rejected < 20  # most patches of another bottle show
