import numpy as np
import pytest

from generation.color_jitter import OPERATIONS, apply_jitter, draw_jitter


def _patch():
    return np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)


def _jitter(**factors):
    return {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, "order": list(OPERATIONS), **factors}


def test_drawn_factors_stay_within_the_strength():
    rng = np.random.default_rng(0)
    for _ in range(200):
        jitter = draw_jitter(rng, 0.1)
        assert all(0.9 <= jitter[name] <= 1.1 for name in ("brightness", "contrast", "saturation"))
        assert -0.1 <= jitter["hue"] <= 0.1
        assert sorted(jitter["order"]) == sorted(OPERATIONS)


def test_the_same_rng_state_draws_the_same_jitter():
    assert draw_jitter(np.random.default_rng(3), 0.1) == draw_jitter(np.random.default_rng(3), 0.1)


def test_neutral_factors_leave_the_patch_unchanged():
    assert np.array_equal(apply_jitter(_patch(), _jitter()), _patch())


def test_brightness_scales_the_pixels():
    grey = np.full((4, 4, 3), 100, np.uint8)
    assert np.all(apply_jitter(grey, _jitter(brightness=1.1)) == 110)


def test_hue_turns_red_towards_green_and_leaves_grey_alone():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    shifted = apply_jitter(red, _jitter(hue=0.1)).astype(int)
    assert shifted[0, 0, 1] > 50 and shifted[0, 0, 0] == 200  # a 36 degree turn of pure red adds green
    grey = np.full((4, 4, 3), 90, np.uint8)
    assert np.array_equal(apply_jitter(grey, _jitter(hue=0.1)), grey)


@pytest.mark.parametrize("operation", ["contrast", "saturation"])
def test_each_operation_changes_a_colourful_patch(operation):
    assert not np.array_equal(apply_jitter(_patch(), _jitter(**{operation: 0.5})), _patch())


def test_the_order_matters_and_is_followed():
    jitter = _jitter(brightness=1.1, contrast=0.5)
    forward = apply_jitter(_patch(), {**jitter, "order": ["brightness", "contrast", "saturation", "hue"]})
    backward = apply_jitter(_patch(), {**jitter, "order": ["contrast", "brightness", "saturation", "hue"]})
    assert not np.array_equal(forward, backward)
