"""How callers stop a running request: a threading.Event or any zero-argument callable."""

from __future__ import annotations

from collections.abc import Callable
from threading import Event

CancelCheck = Event | Callable[[], bool] | None


def as_cancel_check(cancel: CancelCheck) -> Callable[[], bool]:
    """A callable that says whether to stop; polled once per decoding step."""
    if cancel is None:
        return lambda: False
    if isinstance(cancel, Event):
        return cancel.is_set
    return cancel
