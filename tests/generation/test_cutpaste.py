import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation import CutPaste
from generation.color_jitter import apply_jitter


def _noise(n=3, size=(256, 256), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _half_uniform(size=128):
    """Left half flat grey, right half noise: pastes within the flat half are invisible."""
    image = np.full((size, size, 3), 128, np.uint8)
    image[:, size // 2:] = np.random.default_rng(0).integers(0, 256, (size, size - size // 2, 3), dtype=np.uint8)
    return image


def _paste_from_params(source, params):
    """The sample's image and mask, rebuilt from its recorded parameters with PIL directly."""
    cut, paste = params["cut"], params["paste"]
    patch = source[cut["y"]:cut["y"] + cut["height"], cut["x"]:cut["x"] + cut["width"]]
    patch = apply_jitter(patch, params["jitter"])
    footprint = np.ones(patch.shape[:2], bool)
    if params["variant"] == "scar":
        rotated = Image.fromarray(patch).convert("RGBA").rotate(params["angle"], Image.Resampling.NEAREST, expand=True)
        patch, footprint = np.asarray(rotated)[..., :3], np.asarray(rotated)[..., 3] == 255
    image, mask = source.copy(), np.zeros(source.shape[:2], np.float32)
    height, width = footprint.shape
    image[paste["y"]:paste["y"] + height, paste["x"]:paste["x"] + width][footprint] = patch[footprint]
    mask[paste["y"]:paste["y"] + height, paste["x"]:paste["x"] + width] = footprint
    return image, mask


def _changed_pixels(image, source, min_change=25):
    return int(np.count_nonzero(np.abs(image.astype(int) - source).max(axis=2) > min_change))


def _assert_masks_are_the_paste_footprints(synthetic, normals):
    for image, mask, source, params in zip(synthetic.images, synthetic.masks, synthetic.sources,
                                           synthetic.sample_params):
        expected_image, expected_mask = _paste_from_params(normals[source], params)
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        assert np.array_equal(mask, expected_mask)
        assert np.array_equal(image, expected_image)
        assert np.array_equal(image[mask == 0], normals[source][mask == 0])


@pytest.mark.parametrize("variant", ["normal", "scar"])
def test_mask_is_exactly_the_pasted_footprint(variant):
    normals = _noise()
    synthetic = CutPaste(variant=variant).generate(normals, 20, seed=0)
    assert {params["variant"] for params in synthetic.sample_params} == {variant}
    _assert_masks_are_the_paste_footprints(synthetic, normals)


def test_on_noise_almost_every_masked_pixel_changes():
    normals = _noise()
    synthetic = CutPaste(variant="union").generate(normals, 20, seed=1)
    for image, mask, source in zip(synthetic.images, synthetic.masks, synthetic.sources):
        changed = np.any(image != normals[source], axis=2)
        assert changed.sum() > 0.9 * mask.sum()


def test_normal_patches_have_the_specified_area_and_aspect():
    synthetic = CutPaste(variant="normal").generate(_noise(1), 200, seed=0)
    cuts = [params["cut"] for params in synthetic.sample_params]
    areas = np.array([cut["width"] * cut["height"] for cut in cuts]) / 256 ** 2
    aspects = np.array([cut["width"] / cut["height"] for cut in cuts])
    assert 0.018 < areas.min() and areas.max() < 0.16
    assert 0.28 < aspects.min() and aspects.max() < 1 / 0.28
    assert aspects.min() < 0.5 and aspects.max() > 2  # both orientations are drawn
    assert [mask.sum() for mask in synthetic.masks] == [cut["width"] * cut["height"] for cut in cuts]


def test_scars_are_thin_rotated_and_pasted_through_their_rotated_footprint():
    synthetic = CutPaste(variant="scar").generate(_noise(1), 200, seed=0)
    cuts = [params["cut"] for params in synthetic.sample_params]
    angles = np.array([params["angle"] for params in synthetic.sample_params])
    assert all(2 <= cut["width"] <= 16 and 10 <= cut["height"] <= 25 for cut in cuts)
    assert -45 <= angles.min() < -30 and 30 < angles.max() <= 45
    for mask, cut, angle in zip(synthetic.masks, cuts, angles):
        ys, xs = np.nonzero(mask)
        box_area = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        assert abs(mask.sum() - cut["width"] * cut["height"]) <= 0.25 * cut["width"] * cut["height"] + 4
        if abs(angle) > 20:
            assert mask.sum() < 0.8 * box_area  # a rotated rectangle, not its bounding box


def test_union_makes_both_kinds_about_half_each():
    synthetic = CutPaste(variant="union").generate(_noise(), 100, seed=0)
    scars = sum(params["variant"] == "scar" for params in synthetic.sample_params)
    assert 35 <= scars <= 65


def test_samples_come_from_any_of_the_normal_images():
    normals = _noise(4)
    synthetic = CutPaste().generate(normals, 40, seed=0)
    assert set(synthetic.sources) == {0, 1, 2, 3}
    _assert_masks_are_the_paste_footprints(synthetic, normals)  # each sample really is its source, pasted


def test_different_seeds_give_different_sets():
    normals = _noise()
    first, second = CutPaste().generate(normals, 5, seed=0), CutPaste().generate(normals, 5, seed=1)
    assert first.digest != second.digest
    assert [image.tobytes() for image in first.images] != [image.tobytes() for image in second.images]


def test_the_generator_uses_no_global_random_state():
    normals = _noise()
    np.random.seed(0)
    first = CutPaste().generate(normals, 5, seed=3)
    np.random.seed(1)
    second = CutPaste().generate(normals, 5, seed=3)
    assert [image.tobytes() for image in first.images] == [image.tobytes() for image in second.images]


@pytest.mark.parametrize("change", [{"variant": "scar"}, {"jitter": 0.2}, {"min_changed_pixels": 0}])
def test_digest_changes_with_the_params(change):
    normals = _noise()
    assert CutPaste(**change).digest(normals, 10, 0) != CutPaste().digest(normals, 10, 0)


def test_digest_changes_with_seed_n_and_one_source_pixel():
    normals = _noise()
    digest = CutPaste().digest(normals, 10, 0)
    assert CutPaste().digest(normals, 10, 1) != digest
    assert CutPaste().digest(normals, 11, 0) != digest
    normals[2][100, 17, 0] ^= 1
    assert CutPaste().digest(normals, 10, 0) != digest


def test_lists_and_tuples_of_params_are_the_same_request():
    normals = _noise(1)
    assert CutPaste(area_ratio=[0.02, 0.15], scar_width=(2, 16)).digest(normals, 5, 0) == \
           CutPaste().digest(normals, 5, 0)


def test_a_uniform_image_fails_with_a_clear_error():
    uniform = [np.full((128, 128, 3), 128, np.uint8)]
    with pytest.raises(ValueError, match=r"sample 0: 7 draws in a row .* too uniform .* min_changed_pixels=0"):
        CutPaste(max_attempts=7).generate(uniform, 3, seed=0)


def test_the_rule_switched_off_accepts_invisible_samples():
    uniform = [np.full((128, 128, 3), 128, np.uint8)]
    synthetic = CutPaste(min_changed_pixels=0).generate(uniform, 10, seed=0)
    assert synthetic.rejected == 0
    assert all(_changed_pixels(image, uniform[0]) == 0 for image in synthetic.images)


def test_invisible_draws_are_rejected_and_returned_samples_pass_the_rule():
    normals = [_half_uniform()]
    synthetic = CutPaste().generate(normals, 60, seed=0)
    assert synthetic.rejected > 0
    required = math.ceil(20 * (128 / 256) ** 2)  # 20 pixels at 256 x 256, scaled with the area
    for image, params in zip(synthetic.images, synthetic.sample_params):
        assert _changed_pixels(image, normals[0]) == params["changed_pixels"] >= required
    _assert_masks_are_the_paste_footprints(synthetic, normals)


def test_a_stricter_rule_rejects_more():
    normals = [_half_uniform()]
    lenient = CutPaste(min_changed_pixels=5).generate(normals, 60, seed=0)
    strict = CutPaste(min_changed_pixels=200).generate(normals, 60, seed=0)
    assert strict.rejected > lenient.rejected
    assert min(params["changed_pixels"] for params in strict.sample_params) >= 200 // 4


def test_rejections_leave_the_union_variants_unchanged():
    normals = [_half_uniform()]
    variants = lambda synthetic: [params["variant"] for params in synthetic.sample_params]  # noqa: E731
    assert variants(CutPaste().generate(normals, 30, seed=0)) == \
           variants(CutPaste(min_changed_pixels=0).generate(normals, 30, seed=0))


@pytest.mark.parametrize("size", [512, 64])
def test_sizes_scale_with_the_image(size):
    normals = _noise(2, size=(size, size))
    scale = size / 256
    synthetic = CutPaste().generate(normals, 40, seed=0)
    _assert_masks_are_the_paste_footprints(synthetic, normals)
    for mask, params in zip(synthetic.masks, synthetic.sample_params):
        cut = params["cut"]
        if params["variant"] == "scar":
            assert 2 * scale - 1 <= cut["width"] <= 16 * scale + 1 and 10 * scale - 1 <= cut["height"] <= 25 * scale + 1
        else:
            assert 0.02 * size ** 2 * 0.8 <= mask.sum() <= 0.15 * size ** 2 * 1.2
        assert params["changed_pixels"] >= math.ceil(20 * scale ** 2)


def test_non_square_images_work():
    normals = _noise(2, size=(64, 160))
    synthetic = CutPaste().generate(normals, 20, seed=0)
    _assert_masks_are_the_paste_footprints(synthetic, normals)


@pytest.mark.parametrize("shape, message", [
    ((24, 256, 3), r"normal_images\[1\] is 24x256 px: too small for CutPaste"),
    ((32, 3000, 3), r"normal_images\[1\] is 32x3000 px: too small for rotated scars"),
])
def test_too_small_images_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        CutPaste().generate([_noise(1)[0], np.zeros(shape, np.uint8)], 3, seed=0)


@pytest.mark.parametrize("params, message", [
    ({"variant": "scars"}, "variant must be one of normal, scar, union"),
    ({"area_ratio": (0.2, 0.1)}, "area_ratio must satisfy"),
    ({"area_ratio": 0.1}, r"area_ratio must be a pair \(low, high\)"),
    ({"aspect_ratio": 2.0}, "aspect_ratio must be in"),
    ({"scar_width": (0, 16)}, "scar_width must satisfy 0 < low"),
    ({"scar_angle": 120}, "scar_angle must be in"),
    ({"jitter": 0.6}, "jitter must be in"),
    ({"jitter": "0.1"}, "jitter must be a number"),
    ({"min_changed_pixels": -1}, "min_changed_pixels must be an integer >= 0"),
    ({"min_changed_pixels": 2.5}, "min_changed_pixels must be an integer"),
    ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
])
def test_bad_params_are_refused_at_construction(params, message):
    with pytest.raises(ValueError, match=message):
        CutPaste(**params)


def test_params_are_plain_json():
    params = CutPaste(variant="scar").get_params()
    assert json.loads(json.dumps(params))["variant"] == "scar"
    assert params["min_changed_pixels"] == 20 and params["min_change"] == 25


def test_real_bottle_images(mvtec_root):
    paths = sorted((mvtec_root / "bottle" / "train" / "good").glob("*.png"))[:20]
    normals = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    synthetic = CutPaste().generate(normals, 100, seed=0)
    _assert_masks_are_the_paste_footprints(synthetic, normals)
    assert synthetic.rejected < 50  # bottles are textured enough that most draws are visible
    assert all(params["changed_pixels"] >= 20 for params in synthetic.sample_params)


def test_real_solar_cells_reject_some_draws():
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        pytest.skip("the elpv-dataset package is not installed")
    images = Path(spec.origin).parent / "data" / "images"
    paths = sorted(images.glob("*.png"))[:10]
    assert len(paths) == 10, f"the installed elpv-dataset package has no images at {images}"
    normals = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    synthetic = CutPaste().generate(normals, 100, seed=0)
    _assert_masks_are_the_paste_footprints(synthetic, normals)
    assert synthetic.rejected > 0
