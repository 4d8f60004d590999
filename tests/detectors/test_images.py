import numpy as np
import pytest
from PIL import Image

from detectors import ImageReadError, image_digest, load_rgb


def test_grey_image_becomes_three_equal_channels(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    image = load_rgb(tmp_path / "grey.png")
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)


def test_rgba_loses_its_alpha_channel(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), rgba[:, :, :3])


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    grey16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    image = load_rgb(tmp_path / "grey16.png")
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])


def test_corrupt_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_rgb(path)


def test_truncated_file_raises_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "whole.png")
    path = tmp_path / "truncated.png"
    path.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(ImageReadError, match="truncated.png"):
        load_rgb(path)


def test_missing_file_raises_naming_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nowhere.png"):
        load_rgb(tmp_path / "nowhere.png")
    assert issubclass(ImageReadError, ValueError)


def test_digest_depends_on_pixels_and_shape_only():
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    assert image_digest(image) == image_digest(image.copy())
    assert image_digest(image) != image_digest(image.reshape(6, 4, 3))
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert image_digest(image) != image_digest(changed)
    assert image_digest(np.asfortranarray(image)) == image_digest(image)
