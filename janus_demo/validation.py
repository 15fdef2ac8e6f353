"""Range checks that turn bad numbers into one clear sentence (sliders are no defence: APIs accept anything)."""

from __future__ import annotations

import math

from .errors import InputError

MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 2000  # image prompts: Janus was trained on captions far shorter than this
MAX_MESSAGE_CHARS = 8000  # one chat message
MAX_CHAT_IMAGES = 8  # per conversation: each adds 578 tokens and a vision-encoder pass
MAX_NEW_TOKENS = 2048
MAX_IMAGES = 64  # per image request, before memory-sized chunking


def check_text(name: str, value, limit: int, *, required: bool = True) -> str:
    """`value` as text of at most `limit` characters; `required` refuses empty or blank text."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"The {name} must be text.")
    if required and not value.strip():
        raise InputError(f"The {name} is empty; write something first.")
    if len(value) > limit:
        raise InputError(f"The {name} is {len(value)} characters long; the limit is {limit}. Shorten it.")
    return value


def check_number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    """`value` as a float within [low, high] (or (low, high]); NaN, inf, bools and text are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (low_open and value == low):
        bounds = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise InputError(f"{name} must be a number {bounds} (got {value!r}).")
    return float(value)


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """`value` as an int within [low, high]; whole floats like 4.0 are accepted."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InputError(f"{name} must be a whole number {limit} (got {value!r}).")
    return value
