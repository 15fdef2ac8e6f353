"""What one request may ask for: this deployment's limits (from the app's flags) and the ranges
that the sliders and the API share."""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import MAX_IMAGES, check_int, check_number

CFG_RANGE = (1.0, 10.0)
TEMPERATURE_RANGE = (0.0, 2.0)
MAX_NEW_TOKENS_RANGE = (1, 1024)


@dataclass
class Limits:
    max_images: int = 16
    time_limit_s: float = 900.0

    def __post_init__(self) -> None:
        check_int("--max-images", self.max_images, 1, MAX_IMAGES)
        check_number("--timeout", self.time_limit_s, 1, 24 * 3600)


LIMITS = Limits()  # one object, changed in place: every module that imported it sees the flags


def set_limits(max_images: int, time_limit_s: float) -> None:
    """Apply the app's flags, checked first (`demo.build_demo` calls this)."""
    checked = Limits(max_images=max_images, time_limit_s=time_limit_s)
    LIMITS.max_images, LIMITS.time_limit_s = checked.max_images, checked.time_limit_s
