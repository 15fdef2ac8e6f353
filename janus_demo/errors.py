"""Errors whose message is written for the person using the demo, not for a developer."""


class JanusError(Exception):
    """Base class: `str(error)` is one sentence that says what to do."""


class InputError(JanusError, ValueError):
    """A request the engine refuses (bad image, empty prompt, out-of-range number)."""


class LoadError(JanusError, RuntimeError):
    """The model could not be loaded (no network, unknown id, not a Janus checkpoint, memory)."""


class Cancelled(JanusError):
    """The caller cancelled the request; everything it allocated has been released."""


class TimedOut(JanusError):
    """The request ran past its time limit and was stopped; its memory has been released."""


class OutOfMemory(JanusError, RuntimeError):
    """The device ran out of memory mid-request; memory has been released and the engine still works."""
