"""Range checks that turn bad numbers into one clear sentence (sliders are no defence: APIs accept anything)."""

from __future__ import annotations

import math

from .errors import InputError

MAX_SEED = 2**31 - 1


def check_number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    """`value` as a float within [low, high] (or (low, high]); NaN, inf, bools and text are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (low_open and value == low):
        bound = f"above {low:g}" if low_open else f"from {low:g}"
        raise InputError(f"{name} must be a number {bound} to {high:g} (got {value!r}).")
    return float(value)


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """`value` as an int within [low, high]; whole floats like 4.0 are accepted."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InputError(f"{name} must be a whole number {limit} (got {value!r}).")
    return value
