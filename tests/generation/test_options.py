"""The one set of option validators: one rule for what a number, an integer and a pair are, for every generator."""

import math
import re

import numpy as np
import pytest

from generation import CutPaste, NSA, Perlin, options


def test_integers_are_ints_of_any_kind_but_never_bools_floats_or_strings():
    assert options.integer("k", np.int64(3), minimum=1) == 3
    assert type(options.integer("k", np.int64(3), minimum=1)) is int
    assert options.integer("k", 0, minimum=0) == 0
    for bad in (True, False, 2.0, "3", None, 0):
        with pytest.raises(ValueError, match=rf"^k must be an integer >= 1, got {bad!r}$"):
            options.integer("k", bad, minimum=1)


def test_numbers_are_finite_ints_or_floats_and_never_bools_or_strings():
    assert options.number("x", np.float32(0.5), 0, 1) == 0.5
    assert type(options.number("x", 1, 0, 1)) is float
    for bad in (True, False, "0.5", None, math.nan, np.nan, [0.5]):
        with pytest.raises(ValueError, match=r"^x must be a number in \[0, 1\], got "):
            options.number("x", bad, 0, 1)
    for bad in (math.inf, -math.inf):  # infinite numbers are refused by type, not by the range
        with pytest.raises(ValueError, match=r"^x must be a number in \[-1e\+09, 1e\+09\]"):
            options.number("x", bad, -1e9, 1e9)


@pytest.mark.parametrize("low_open, high_open, expected", [
    (False, False, "[0, 0.5]"), (True, False, "(0, 0.5]"), (False, True, "[0, 0.5)"), (True, True, "(0, 0.5)"),
])
def test_number_bounds_are_included_unless_open(low_open, high_open, expected):
    check = lambda value: options.number("x", value, 0, 0.5, low_open=low_open, high_open=high_open)  # noqa: E731
    assert check(0.25) == 0.25
    for end, is_open in ((0, low_open), (0.5, high_open)):
        if is_open:
            with pytest.raises(ValueError, match=rf"^x must be in {re.escape(expected)}, got {end}$"):
                check(end)
        else:
            assert check(end) == end
    for outside in (-0.01, 0.51, 10**400):
        with pytest.raises(ValueError, match=rf"^x must be in {re.escape(expected)}, got {outside!r}$"):
            check(outside)


def test_intervals_are_ordered_pairs_of_positive_numbers():
    assert options.interval("r", [2, np.float64(16)]) == (2.0, 16.0)
    assert options.interval("r", (0.5, 0.5), high=1.0) == (0.5, 0.5)  # a single value is allowed
    assert all(type(end) is float for end in options.interval("r", (2, 16)))
    for reversed_or_out in ((0.2, 0.1), (0, 0.1), (-0.1, 0.1), (0.1, 1.5)):
        with pytest.raises(ValueError, match=r"^r must satisfy 0 < low <= high <= 1, got "):
            options.interval("r", reversed_or_out, high=1.0)
    with pytest.raises(ValueError, match=r"^r must satisfy 0 < low <= high, got \(3, 2\)$"):  # no "<= inf"
        options.interval("r", (3, 2))
    for not_a_pair in (0.1, (0.1,), (0.1, 0.2, 0.3), None, ("0.1", "0.2"), (True, 2), (1, math.inf), (1, math.nan),
                       "ab"):
        with pytest.raises(ValueError, match=r"^r must be a pair \(low, high\) of numbers, got "):
            options.interval("r", not_a_pair)


def test_integer_ranges_are_half_open_pairs_of_integers():
    assert options.integer_range("e", [np.int64(0), 6]) == (0, 6)
    assert all(type(end) is int for end in options.integer_range("e", (np.int32(1), np.int64(2))))
    for bad in ((3, 2), (2, 2), (-1, 2)):
        with pytest.raises(ValueError, match=r"^e must satisfy 0 <= low < high, got "):
            options.integer_range("e", bad)
    for bad in ((0.0, 6), (False, 6), (0, "6"), 6, (0, 1, 2)):
        with pytest.raises(ValueError, match=r"^e must be a pair \(low, high\) of integers, got "):
            options.integer_range("e", bad)


def test_flags_and_choices():
    assert options.flag("f", np.bool_(True)) is True
    for bad in (1, 0, "yes", None):
        with pytest.raises(ValueError, match=rf"^f must be True or False, got {bad!r}$"):
            options.flag("f", bad)
    assert options.choice("v", "scar", ("normal", "scar")) == "scar"
    for bad in ("scars", None, ["scar"], np.array(["scar"])):  # a one-element array would compare equal
        with pytest.raises(ValueError, match=r"^v must be one of normal, scar, got "):
            options.choice("v", bad, ("normal", "scar"))


@pytest.mark.parametrize("generator", [CutPaste, Perlin, NSA])
@pytest.mark.parametrize("params, message", [
    ({"min_change": True}, r"min_change must be a number in \[0, 254\], got True"),
    ({"min_change": "25"}, r"min_change must be a number in \[0, 254\], got '25'"),
    ({"min_change": 255}, r"min_change must be in \[0, 254\], got 255"),
    ({"min_changed_pixels": True}, "min_changed_pixels must be an integer >= 0, got True"),
    ({"min_changed_pixels": 20.0}, "min_changed_pixels must be an integer >= 0, got 20.0"),
    ({"max_attempts": np.float64(5)}, "max_attempts must be an integer >= 1, got "),
])
def test_every_generator_applies_the_same_rule_to_its_shared_options(generator, params, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        generator(**params)


@pytest.mark.parametrize("generator, params, message", [
    (CutPaste, {"area_ratio": ("0.02", "0.15")}, r"area_ratio must be a pair \(low, high\) of numbers"),
    (CutPaste, {"scar_width": (True, 16)}, r"scar_width must be a pair \(low, high\) of numbers"),
    (CutPaste, {"scar_height": (10, math.inf)}, r"scar_height must be a pair \(low, high\) of numbers"),
    (CutPaste, {"scar_height": (25, 10)}, r"scar_height must satisfy 0 < low <= high, got \(25, 10\)"),
    (CutPaste, {"jitter": False}, r"jitter must be a number in \[0, 0.5\]"),
    (NSA, {"area_ratio": (0.1, 0.01)}, r"area_ratio must satisfy 0 < low <= high <= 1"),
    (NSA, {"resize": (1.3, 0.7)}, r"resize must satisfy 0 < low <= high, got \(1.3, 0.7\)"),
    (NSA, {"aspect_ratio": True}, r"aspect_ratio must be a number in \(0, 1\]"),
    (NSA, {"mixed": 1}, "mixed must be True or False, got 1"),
    (Perlin, {"scale_exponents": (3, 2)}, r"scale_exponents must satisfy 0 <= low < high, got \(3, 2\)"),
    (Perlin, {"scale_exponents": (True, 3)}, r"scale_exponents must be a pair \(low, high\) of integers"),
    (Perlin, {"scale_exponents": 3}, r"scale_exponents must be a pair \(low, high\) of integers, got 3"),
    (Perlin, {"threshold": "0.5"}, r"threshold must be a number in \(0, 1\), got '0.5'"),
    (Perlin, {"threshold": 1}, r"threshold must be in \(0, 1\), got 1"),
    (Perlin, {"max_opacity_kept": False}, r"max_opacity_kept must be a number in \[0, 1\)"),
    (Perlin, {"texture_jitter": 0.6}, r"texture_jitter must be in \[0, 0.5\], got 0.6"),
])
def test_generator_options_are_refused_by_name_and_value(generator, params, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        generator(**params)


def test_accepted_options_are_stored_as_plain_python_values():
    perlin = Perlin(scale_exponents=[np.int64(1), 4], threshold=np.float32(0.5), min_changed_pixels=np.int64(3))
    assert perlin.scale_exponents == (1, 4) and type(perlin.scale_exponents[0]) is int
    assert type(perlin.threshold) is float and type(perlin.min_changed_pixels) is int
    nsa = NSA(area_ratio=[np.float32(0.25), 0.5], mixed=np.bool_(True))
    assert nsa.area_ratio == (0.25, 0.5) and nsa.mixed is True
