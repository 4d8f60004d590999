"""The validators of generator options and request arguments: each returns the value as the generator stores
it, or raises a short ValueError that names the option and shows the bad value.

One rule for all: a number is a finite int or float (NumPy's included), never a bool and never a string to
convert; an integer is an int (NumPy's included), never a bool.
"""

import math
from collections.abc import Sequence

import numpy as np


def integer(name: str, value, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def number(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float, which must lie between `low` and `high`, each bound included unless it is open."""
    expected = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if not _is_number(value):
        raise ValueError(f"{name} must be a number in {expected}, got {value!r}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise ValueError(f"{name} must be in {expected}, got {value!r}")
    return float(value)


def interval(name: str, value, high: float = math.inf) -> tuple[float, float]:
    """A pair (low, high) of floats with 0 < low <= high <= `high`."""
    low_end, high_end = _pair(name, value, _is_number, "numbers")
    if not 0 < low_end <= high_end <= high:
        bound = "" if high == math.inf else f" <= {high:g}"
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {value!r}")
    return float(low_end), float(high_end)


def integer_range(name: str, value) -> tuple[int, int]:
    """A pair (low, high) of integers with 0 <= low < high: the half-open range of `rng.integers(low, high)`."""
    low_end, high_end = _pair(name, value, _is_int, "integers")
    if not 0 <= low_end < high_end:
        raise ValueError(f"{name} must satisfy 0 <= low < high, got {value!r}")
    return int(low_end), int(high_end)


def flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _pair(name: str, value, is_valid, kind: str) -> tuple:
    try:
        low_end, high_end = value
    except (TypeError, ValueError):
        low_end = high_end = None
    if not (is_valid(low_end) and is_valid(high_end)):
        raise ValueError(f"{name} must be a pair (low, high) of {kind}, got {value!r}")
    return low_end, high_end


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))
