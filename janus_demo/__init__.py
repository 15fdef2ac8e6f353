"""Janus-Pro demo: image understanding and text-to-image on transformers' native Janus classes."""

from .engine import JanusEngine
from .errors import Cancelled, InputError, JanusError, LoadError, OutOfMemory
from .generation import GenerationResult, ImageRequest, Progress
from .loading import load_engine

__all__ = [
    "Cancelled",
    "GenerationResult",
    "ImageRequest",
    "InputError",
    "JanusEngine",
    "JanusError",
    "LoadError",
    "OutOfMemory",
    "Progress",
    "load_engine",
]
