import numpy as np
import pytest

from generation import SyntheticSet, request_digest


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]


def _digest(**changes):
    request = {"generator": "cutpaste", "params": {"variant": "union"}, "n": 10, "seed": 0, "images": _images()}
    return request_digest(**{**request, **changes})


def test_equal_requests_have_equal_digests():
    assert _digest() == _digest()
    assert len(_digest()) == 64


def test_key_order_of_params_does_not_matter():
    params = {"variant": "scar", "jitter": 0.1}
    assert _digest(params=params) == _digest(params=dict(reversed(list(params.items()))))


@pytest.mark.parametrize("change", [
    {"generator": "diffstyle"}, {"params": {"variant": "scar"}}, {"n": 11}, {"seed": 1}, {"images": _images()[:1]},
    {"images": _images()[::-1]},
])
def test_every_part_of_the_request_changes_the_digest(change):
    assert _digest(**change) != _digest()


def test_one_pixel_changes_the_digest():
    images = _images()
    images[1][3, 4, 2] ^= 1
    assert _digest(images=images) != _digest()


def test_same_pixels_in_another_shape_change_the_digest():
    images = _images()
    assert _digest(images=[images[0].reshape(4, 16, 3), images[1]]) != _digest()


def test_a_set_refuses_lists_of_unequal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        SyntheticSet(generator="g", params={}, seed=0, digest="d", images=_images(), masks=[None],
                     sources=[0, 1], sample_params=[{}, {}], rejected=0)
