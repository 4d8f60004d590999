import numpy as np
import pytest
from PIL import Image

from detectors import FeatureCache


def _images(n, seed=0, size=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_one_forward_pass_per_image_per_backbone():
    cache = FeatureCache()
    images = _images(4)
    cache.features("mobilenet_v2", "imagenet", "mid", "avg", images[:3])
    first_pass = cache.forward_seconds
    assert first_pass > 0
    for layer, dim in (("mid", 96), ("last", 1280)):
        for pooling in ("avg", "max"):
            vectors = cache.features("mobilenet_v2", "imagenet", layer, pooling, images[:3])
            assert vectors.shape == (3, dim) and vectors.dtype == np.float32
    assert cache.forward_seconds == first_pass  # every layer and pooling came from the first pass: no time spent
    superset = images + [images[0].copy()]  # one new image and a duplicate
    last = cache.features("mobilenet_v2", "imagenet", "last", "max", superset)
    assert cache.forward_counts == {("mobilenet_v2", "imagenet"): 4}
    assert cache.forward_seconds > first_pass  # the new image's pass is timed
    np.testing.assert_array_equal(last[0], last[4])
    assert (last >= cache.features("mobilenet_v2", "imagenet", "last", "avg", superset)).all()

    cache.features("mobilenet_v2", "random", "last", "avg", images)
    assert cache.forward_counts[("mobilenet_v2", "random")] == 4
    assert cache.backbone("mobilenet_v2", "imagenet") is cache.backbone("mobilenet_v2", "imagenet")


def test_batching_does_not_change_features():
    images = _images(5, size=48)
    whole = FeatureCache(batch_size=32).features("timm:test_resnet", "random", "mid", "avg", images)
    pieces = FeatureCache(batch_size=2).features("timm:test_resnet", "random", "mid", "avg", images)
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-6)


def test_pixel_features_are_the_bilinear_resized_image():
    image = _images(1, size=64)[0]
    vector = FeatureCache().features("pixels_16", "none", "raw", "avg", [image])[0]
    resized = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(vector, resized.transpose(2, 0, 1).ravel(), rtol=1e-6)


def test_features_persist_in_a_directory(tmp_path):
    images = _images(3)
    first = FeatureCache(directory=tmp_path)
    expected = first.features("timm:test_resnet", "random", "last", "avg", images)

    second = FeatureCache(directory=tmp_path)
    np.testing.assert_array_equal(second.features("timm:test_resnet", "random", "last", "avg", images), expected)
    np.testing.assert_array_equal(second.features("timm:test_resnet", "random", "mid", "max", images),
                                  first.features("timm:test_resnet", "random", "mid", "max", images))
    assert second.forward_counts == {}

    damaged = next(tmp_path.rglob("*.npz"))
    damaged.write_bytes(b"garbage")
    third = FeatureCache(directory=tmp_path)
    with pytest.warns(UserWarning, match="damaged feature cache entry .*: computing it again"):
        np.testing.assert_array_equal(third.features("timm:test_resnet", "random", "last", "avg", images), expected)
    assert third.forward_counts == {("timm:test_resnet", "random"): 1}


def test_bad_requests_fail_clearly():
    cache = FeatureCache()
    with pytest.raises(ValueError, match="no layer 'mid'.*raw"):
        cache.features("pixels_16", "none", "mid", "avg", _images(1))
    with pytest.raises(ValueError, match="pooling 'median'"):
        cache.features("pixels_16", "none", "raw", "median", _images(1))
    with pytest.raises(ValueError, match=r"uint8 RGB arrays.*\(32, 32\)"):
        cache.features("pixels_16", "none", "raw", "avg", [np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        cache.features("pixels_16", "none", "raw", "avg", [])


def test_read_only_images_are_hashed_once_and_writable_ones_every_time(monkeypatch):
    from detectors import features as module

    hashed = []
    real_digest = module.image_digest
    monkeypatch.setattr(module, "image_digest", lambda image: hashed.append(1) or real_digest(image))
    cache = FeatureCache()
    frozen = np.zeros((32, 32, 3), np.uint8)
    frozen.setflags(write=False)
    writable = np.full((32, 32, 3), 100, np.uint8)
    for _ in range(3):
        before = cache.features("pixels_16", "none", "raw", "avg", [frozen, writable])
    assert len(hashed) == 1 + 3
    writable[:8, :8] = 0  # changed in place: must not be served the old features
    after = cache.features("pixels_16", "none", "raw", "avg", [frozen, writable])
    np.testing.assert_array_equal(after[0], before[0])
    assert not np.array_equal(after[1], before[1])
