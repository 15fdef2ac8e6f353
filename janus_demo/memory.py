"""Recognising out-of-memory failures and giving the memory back, on CUDA and on the CPU."""

from __future__ import annotations

import gc

import torch

_CPU_OOM_WORDS = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _CPU_OOM_WORDS)


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back, so the next request starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
