"""The 576-step loop that turns prompt rows into image tokens, fast on a GPU.

The prompt is prefilled eagerly. Every later step is one function over fixed buffers (the
next input embedding, positions, a 4D attention mask, a step counter, the token grid and
the per-image noise keys) and a static KV cache, with no Python value that changes between
steps. On CUDA that step is captured once as a CUDA graph and replayed 575 times: one
launch per step instead of hundreds, and no host sync in the loop. Where capture fails the
same function runs eagerly, so both paths compute the same tokens. The host stays at most
MAX_STEPS_AHEAD steps ahead of the GPU, so progress, previews and cancellation follow it.

On the CPU nothing is captured and shapes may change, so attention covers only the cache
slots filled so far instead of all 600 (a fifth of a step's time on the `small` preset).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import Cache, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.models.llama.modeling_llama import LlamaModel

from .memory import CUDA_LOCK, is_out_of_memory
from .sampling import choose_tokens

logger = logging.getLogger(__name__)

MAX_STEPS_AHEAD = 2  # steps queued on the GPU ahead of the host: hides launch gaps, bounds lag
WARMUP_STEPS = 2  # eager steps (cuBLAS/cuDNN set-up) before a capture
_graphs_broken = False  # set once a capture fails (not for lack of memory); later requests skip it
_side_streams: dict[torch.device, torch.cuda.Stream] = {}
_streams_lock = threading.Lock()
# transformers renamed the decoder's `past_key_values` to `cache` (5.24 accepts both, 5.17 only the
# old name and silently drops an unknown keyword into **kwargs): pass the name this version reads.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cuda_graphs_wanted(device: torch.device) -> bool:
    """CUDA graphs on CUDA devices, unless JANUS_CUDA_GRAPHS=0 or a capture already failed."""
    return device.type == "cuda" and os.environ.get("JANUS_CUDA_GRAPHS", "1") != "0" and not _graphs_broken


def graphs_broken() -> bool:
    """Whether a failed capture turned CUDA graphs off for this process (benchmarks report it)."""
    return _graphs_broken


def disable_graphs(reason: str) -> None:
    """Decode eagerly from now on in this process (logged)."""
    global _graphs_broken
    _graphs_broken = True
    logger.warning("CUDA graphs off: %s; decoding eagerly from now on", reason)


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The device's one capture stream, reused: cuBLAS keeps a 32 MiB workspace per stream, so a
    new stream per request would make memory creep up request after request."""
    with _streams_lock:
        if device not in _side_streams:
            _side_streams[device] = torch.cuda.Stream(device)
        return _side_streams[device]


def end_capture(graph: torch.cuda.CUDAGraph, device: torch.device, pool) -> None:
    """`graph.capture_end()`; if it fails (an invalidated capture), hand the allocator back from
    the capture's pool first, which torch skips then: else every later `empty_cache()` fails an
    internal assert, as if a capture were still under way."""
    try:
        graph.capture_end()
    except Exception:
        end_pool = getattr(torch._C, "_cuda_endAllocateToPool", None)
        if end_pool is not None:
            end_pool(device.index, pool)
        raise


class _FilledSlots(StaticLayer):
    """A preallocated cache layer whose attention sees only the filled slots (eager runs only:
    the length is read on the host, which is free on the CPU)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        filled = int(self.cumulative_length)
        return keys[:, :, :filled], values[:, :, :filled]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return int(self.cumulative_length) + query_length, 0


class TokenLoop:
    """One request's decoding state. Iterate `steps()`; `tokens` fills column by column.

    `fixed_shapes` (default: on CUDA) keeps every step's shapes identical, as CUDA graphs need;
    without it attention covers only the filled part of the cache."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor,
                 cfg_scales: Sequence[float], temperatures: Sequence[float], top_k: int | None, top_p: float | None,
                 num_tokens: int, fixed_shapes: bool | None = None) -> None:
        self.model = model
        self.num_images = keys.shape[0]
        self.rows, self.length = ids.shape
        self.num_tokens = num_tokens
        self.ids, self.prompt_mask = ids, mask
        device = ids.device
        # Per-image settings as tensors, also when they are all equal: every image then goes through
        # the same kernels whatever its neighbours' settings, so it is the image it would be alone.
        guided = [i for i, scale in enumerate(cfg_scales) if scale != 1]  # images with an unconditional row
        if len(cfg_scales) != self.num_images or self.rows != self.num_images + len(guided):
            raise ValueError("expected a conditional row per image and an unconditional row per CFG scale != 1")
        self.guided = torch.tensor(guided, dtype=torch.long, device=device)
        self.all_guided = len(guided) == self.num_images
        self.cfg = torch.tensor([cfg_scales[i] for i in guided], dtype=torch.float32, device=device).unsqueeze(1)
        self.row_image = torch.cat([torch.arange(self.num_images, device=device), self.guided])  # image of each row
        # All greedy: a plain argmax, no noise to compute. Otherwise one temperature per row (0 = greedy).
        temperature = 0.0 if not any(temperatures) else torch.tensor(temperatures, dtype=torch.float32, device=device)
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        max_len = self.length + num_tokens
        self.fixed_shapes = device.type == "cuda" if fixed_shapes is None else fixed_shapes
        config = model.config.get_text_config(decoder=True)
        if self.fixed_shapes:
            self.cache = StaticCache(config=config, max_cache_len=max_len)
        else:
            self.cache = Cache(layers=[_FilledSlots(max_cache_len=max_len) for _ in range(config.num_hidden_layers)])
        self.filled = self.length  # cache slots in use, tracked on the host for the eager path
        self.keys = keys  # (images,) int64: each image's sampling noise key (see sampling.py)
        self.tokens = torch.zeros((self.num_images, num_tokens), dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)  # index of the token being picked
        self.slot_base = torch.full((1,), self.length, dtype=torch.long, device=device)
        # Keys visible to the next query: the prompt's non-padding positions, then each new token's.
        self.mask = torch.zeros((self.rows, 1, 1, max_len), dtype=torch.bool, device=device)
        self.mask[:, 0, 0, : self.length] = mask.bool()
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.embeds: torch.Tensor | None = None
        self.graphed = False  # whether the steps after the warm-up replay a CUDA graph

    # ----- the step ----------------------------------------------------------------------
    def _pick(self, hidden: torch.Tensor) -> None:
        """From the last hidden states: CFG, choose, record the token, prepare the next step."""
        logits = self.model.model.generation_head(hidden).float()  # CFG in bf16 would amplify rounding 5x
        n = self.num_images
        if self.rows > n:  # conditional rows first, then the unconditional rows of the guided images
            cond, uncond = logits[:n], logits[n:]
            if self.all_guided:
                logits = uncond + (cond - uncond) * self.cfg
            else:
                guided = uncond + (cond.index_select(0, self.guided) - uncond) * self.cfg
                logits = cond.index_copy(0, self.guided, guided)
        picked = choose_tokens(logits, self.keys, self.step, **self.sampling)
        self.tokens.index_copy_(1, self.step, picked.unsqueeze(1))
        next_embeds = self.model.prepare_embeddings_for_image_generation(picked[self.row_image].unsqueeze(-1))
        if self.embeds is None:
            self.embeds = next_embeds
        else:
            self.embeds.copy_(next_embeds)
        self.mask.index_fill_(3, self.slot_base + self.step, True)  # where the new token's key goes
        self.step.add_(1)

    def _prefill(self) -> None:
        language_model = self.model.model.language_model
        hidden = language_model(
            inputs_embeds=self.model.get_input_embeddings()(self.ids),
            attention_mask=self.prompt_mask,
            position_ids=self.positions,
            use_cache=True,
            **{CACHE_KWARG: self.cache},
        ).last_hidden_state[:, -1, :]
        if self.cache.get_seq_length() != self.length:  # once per request; a dropped cache would decode blind
            raise RuntimeError("the language model did not fill the KV cache; this transformers version is unsupported")
        self.positions = self.positions[:, -1:] + 1
        self._pick(hidden)

    def _decode_step(self) -> None:
        """One step; with fixed shapes it is graph-safe: only in-place updates of this object's tensors."""
        mask = self.mask
        if not self.fixed_shapes:
            self.filled += 1
            mask = mask[..., : self.filled]
        hidden = self.model.model.language_model(
            inputs_embeds=self.embeds,
            attention_mask=mask,
            position_ids=self.positions,
            use_cache=True,
            **{CACHE_KWARG: self.cache},
        ).last_hidden_state[:, -1, :]
        self.positions.add_(1)
        self._pick(hidden)

    # ----- running it --------------------------------------------------------------------
    def steps(self, *, use_cuda_graph: bool) -> Iterator[int]:
        """Run the loop, yielding each step's index once it is queued; stop iterating to stop."""
        device = self.ids.device
        if use_cuda_graph and not self.fixed_shapes:
            raise ValueError("a CUDA graph needs fixed_shapes=True")
        side = side_stream(device) if use_cuda_graph else None
        done: list[torch.cuda.Event] = []
        run = self._decode_step
        self._prefill()
        yield 0
        for step in range(1, self.num_tokens):
            if side is not None and step <= WARMUP_STEPS:
                self._on_stream(side, self._decode_step)  # warm-up on the capture stream, as CUDA graphs need
            else:
                if side is not None and step == WARMUP_STEPS + 1:
                    run = self._capture(side) or run
                run()
            if device.type == "cuda":  # keep the host close behind the GPU, sleeping rather than spinning
                done.append(torch.cuda.Event(blocking=True))
                done[-1].record(torch.cuda.current_stream(device))
                if len(done) > MAX_STEPS_AHEAD:
                    done.pop(0).synchronize()
            yield step

    @staticmethod
    def _on_stream(stream: torch.cuda.Stream, work: Callable[[], None]) -> None:
        """`work` on the shared side stream; the lock keeps it out of another thread's capture there."""
        current = torch.cuda.current_stream(stream.device)
        with CUDA_LOCK:
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                work()
        current.wait_stream(stream)

    def _capture(self, stream: torch.cuda.Stream) -> Callable[[], None] | None:
        """The decode step as a replayable CUDA graph, or None (logged) if capture fails.

        Not `torch.cuda.graph(...)`: it calls `empty_cache()`, which asserts if any thread of the
        process is capturing, and leaves the thread on the side stream when `capture_end` fails.
        Here one process-wide lock covers every capture and every `empty_cache()` (release_memory),
        and the stream context is always left."""
        device = stream.device
        try:
            graph = torch.cuda.CUDAGraph()
            pool = torch.cuda.graph_pool_handle()
            with CUDA_LOCK:
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    # thread_local: CUDA work of other requests' threads is neither captured nor refused
                    graph.capture_begin(pool, capture_error_mode="thread_local")
                    try:
                        self._decode_step()
                    finally:
                        end_capture(graph, device, pool)
            self.graphed = True
            return graph.replay
        except Exception as exc:  # any capture problem: the eager step computes the same tokens
            if is_out_of_memory(exc):  # no room for the graph's pool now; later requests may have it
                logger.warning("CUDA graph capture ran out of memory; this request decodes eagerly")
                return None
            disable_graphs(f"the capture failed ({exc})")
            return None

    def release(self) -> None:
        """Drop the KV cache and buffers now, not when the last reference goes."""
        self.cache = self.embeds = self.mask = None
