"""Device memory: what a request needs, what is free, and recovering from running out.

An image request holds a KV cache for 2N rows (N images, CFG) through 576 steps; with the
7B model that is ~0.6 GB per image, which is why 16 images do not fit next to 15 GB of
weights on a 24 GB card. `plan_chunks` splits the images into the fewest equal batches
that fit; per-image seeds make the chunked result the same images as one batch.
"""

from __future__ import annotations

import gc
import math
import os
import threading
from dataclasses import dataclass

import torch

_CPU_OOM_WORDS = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")
CODEBOOK = 16384
SAFETY = 1.2  # allocator fragmentation and what the estimate leaves out
RESERVE_BYTES = 512 * 2**20  # never plan to the last byte
# Held around every CUDA graph capture and every empty_cache(): torch asserts in empty_cache()
# while any thread of the process captures, and two captures on one stream would mix.
CUDA_LOCK = threading.RLock()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _CPU_OOM_WORDS)


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back, so the next request starts clean."""
    gc.collect()
    if device.type == "cuda":
        with CUDA_LOCK:
            torch.cuda.empty_cache()


def free_bytes(device: torch.device) -> int:
    """Memory a new request may use: free GPU memory plus what PyTorch has cached but not in
    use; on the CPU, the kernel's MemAvailable."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        reserved = stats.get("reserved_bytes.all.current", 0)
        # A per-process cap (set_per_process_memory_fraction: a shared GPU, a simulated smaller card)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)(device)
        free = min(free, int(fraction * total) - reserved)
        return free + reserved - stats.get("allocated_bytes.all.current", 0)
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class RequestMemory:
    """Bytes a request needs beyond the weights, by phase; `peak` is the most alive at once."""

    kv_cache: int
    prefill: int
    step: int
    vq_decode: int

    @property
    def peak(self) -> int:
        # The KV cache lives through prefill, every step and the previews (VQ decodes);
        # the final VQ decode runs after the cache is released.
        return self.kv_cache + max(self.prefill, self.step, self.vq_decode)


def request_memory(config, *, images: int, cfg: bool, prompt_tokens: int, llm_dtype: torch.dtype,
                   vq_dtype: torch.dtype, decode_batch: int, num_tokens: int = 576) -> RequestMemory:
    """Estimate from the architecture alone (no allocation): tested against measured peaks."""
    text, vq = config.text_config, config.vq_config
    rows = images * (2 if cfg else 1)
    max_len = prompt_tokens + num_tokens
    llm_bytes = torch.tensor([], dtype=llm_dtype).element_size()
    vq_bytes = torch.tensor([], dtype=vq_dtype).element_size()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    hidden, inner = text.hidden_size, text.intermediate_size
    kv = 2 * text.num_hidden_layers * rows * max_len * text.num_key_value_heads * head_dim * llm_bytes
    # One layer's live activations for the whole prompt (q, k, v, output, MLP gate/up/act),
    # the attention scores over the static cache, and the first step's logits.
    prefill = rows * prompt_tokens * (5 * hidden + 3 * inner) * llm_bytes
    prefill += rows * text.num_attention_heads * prompt_tokens * max_len * max(llm_bytes, 4)
    # A decode step: the same per token, plus sampling over the codebook in fp32 (logits,
    # scaled, softmax, cumulative sum, top-p sort) for the conditional rows.
    step = rows * (5 * hidden + 3 * inner) * llm_bytes + images * CODEBOOK * 4 * 6
    step += rows * text.num_attention_heads * max_len * max(llm_bytes, 4)
    # VQ decoder at full resolution: five feature maps of base x mult[0] channels alive at once
    # per image, plus one 3x3 convolution's unfolded input as scratch (measured on the CPU).
    side = vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)
    channels = vq.base_channels * vq.channel_multiplier[0]
    vq_decode = decode_batch * side * side * channels * vq_bytes * 5 + side * side * channels * 9 * 4
    return RequestMemory(kv_cache=kv, prefill=prefill, step=step, vq_decode=vq_decode)


def plan_chunks(images: int, fits: int) -> list[int]:
    """`images` split into the fewest chunks of at most `fits`, as equal as possible."""
    if fits >= images:
        return [images]
    count = math.ceil(images / max(fits, 1))
    base, extra = divmod(images, count)
    return [base + 1] * extra + [base] * (count - extra)
