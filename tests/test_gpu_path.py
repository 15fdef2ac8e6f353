"""The CUDA fast path's safety rules, checked on the CPU with stand-ins for torch.cuda's objects:
one reused side stream, one process-wide lock around capture and empty_cache, the stream left
and the allocator handed back when a capture fails, out-of-memory not turning graphs off for
good, the start-up probe, fp32 RoPE frequencies and an fp32 CFG mix."""

from __future__ import annotations

import contextlib
import logging
import threading

import pytest
import torch

from janus_demo import load_engine, memory, token_loop
from janus_demo.generation import ImageRequest
from janus_demo.sampling import image_keys
from janus_demo.token_loop import WARMUP_STEPS, TokenLoop

STEPS = WARMUP_STEPS + 4  # warm-up, capture and a few replays


class FakeStream:
    device = torch.device("cuda", 0)

    def wait_stream(self, other) -> None:
        pass


def lock_is_held_elsewhere() -> bool:
    """Whether another thread holds CUDA_LOCK (an RLock is re-entrant for its own holder)."""
    got = []
    probe = threading.Thread(target=lambda: got.append(memory.CUDA_LOCK.acquire(blocking=False)))
    probe.start()
    probe.join()
    if got[0]:
        memory.CUDA_LOCK.release()
    return not got[0]


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's streams, stream context and pool handle as CPU stand-ins; records stream entries."""
    entered = []

    @contextlib.contextmanager
    def stream_context(stream):
        entered.append(stream)
        try:
            yield
        finally:
            entered.pop()

    monkeypatch.setattr(token_loop, "_graphs_broken", False)
    monkeypatch.setattr(token_loop, "_side_streams", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", stream_context)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 7))
    return entered


def run_loop(engine, *, use_cuda_graph: bool) -> TokenLoop:
    ids, mask = engine.generator.rows(ImageRequest("a lighthouse", num_images=1), 1)
    loop = TokenLoop(engine.model, ids, mask, keys=image_keys(5, 0, 1),
                     cfg_scales=[5.0], temperatures=[1.0], top_k=None, top_p=None, num_tokens=STEPS, fixed_shapes=True)
    with torch.inference_mode():
        for _ in loop.steps(use_cuda_graph=use_cuda_graph):
            pass
    return loop


def test_one_side_stream_per_device_is_reused(fake_cuda, monkeypatch):
    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: made.append(device) or FakeStream())
    first = token_loop.side_stream(torch.device("cuda", 0))
    assert token_loop.side_stream(torch.device("cuda", 0)) is first
    assert token_loop.side_stream(torch.device("cuda", 1)) is not first
    assert made == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_an_invalidated_capture_leaves_the_stream_and_hands_the_allocator_back(engine, fake_cuda, monkeypatch,
                                                                                 caplog):
    """capture_end raising (an invalidated capture) must not leave this thread on the side stream
    nor the allocator capturing; graphs then go off for the process."""
    handed_back, seen = [], {}

    class InvalidatedGraph:
        def capture_begin(self, pool=None, capture_error_mode="global"):
            seen.update(pool=pool, mode=capture_error_mode, locked=lock_is_held_elsewhere(), stream=list(fake_cuda))

        def capture_end(self):
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", InvalidatedGraph)
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", lambda *args: handed_back.append(args), raising=False)
    ids, mask = engine.generator.rows(ImageRequest("a lighthouse", num_images=1), 1)
    loop = TokenLoop(engine.model, ids, mask, keys=image_keys(0, 0, 1), cfg_scales=[5.0], temperatures=[1.0],
                     top_k=None, top_p=None, num_tokens=STEPS, fixed_shapes=True)
    steps = loop.steps(use_cuda_graph=False)
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="janus_demo"):
        next(steps)  # the prefill
        assert loop._capture(token_loop.side_stream(torch.device("cuda", 0))) is None  # eager from here on
    steps.close()
    assert (seen["pool"], seen["mode"], seen["locked"]) == ((0, 7), "thread_local", True)
    assert [type(s) for s in seen["stream"]] == [FakeStream]  # captured on the side stream
    assert fake_cuda == []  # and its context was left
    assert handed_back == [(0, (0, 7))]
    assert not loop.graphed and "the capture failed" in caplog.text
    assert not token_loop.cuda_graphs_wanted(torch.device("cuda"))


def test_running_out_of_memory_while_capturing_keeps_graphs_for_later_requests(engine, fake_cuda, monkeypatch, caplog):
    class GreedyGraph:
        def capture_begin(self, pool=None, capture_error_mode="global"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", GreedyGraph)
    with caplog.at_level(logging.WARNING, logger="janus_demo"):
        loop = run_loop(engine, use_cuda_graph=True)
    assert "ran out of memory" in caplog.text and not loop.graphed
    assert token_loop.cuda_graphs_wanted(torch.device("cuda"))  # the next request tries again
    assert fake_cuda == []


def test_release_memory_waits_for_a_capture_in_another_thread(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    memory.CUDA_LOCK.acquire()  # as a capture would
    try:
        worker = threading.Thread(target=memory.release_memory, args=(torch.device("cuda"),))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and emptied == []
    finally:
        memory.CUDA_LOCK.release()
    worker.join(timeout=10)
    assert emptied == [True]


def test_probe_turns_graphs_off_before_serving_when_capture_fails(engine, fake_cuda, monkeypatch, caplog):
    class BrokenGraph:
        def capture_begin(self, pool=None, capture_error_mode="global"):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", BrokenGraph)
    monkeypatch.setattr(token_loop, "cuda_graphs_wanted", lambda device: not token_loop._graphs_broken)
    monkeypatch.setattr("janus_demo.generation.cuda_graphs_wanted", token_loop.cuda_graphs_wanted)
    with caplog.at_level(logging.INFO, logger="janus_demo"):
        assert engine.generator.probe_cuda_graphs() is False
    assert "the capture failed" in caplog.text and "CUDA graphs: off" in caplog.text
    assert token_loop.graphs_broken()


def test_probe_on_the_cpu_reports_no_graphs(engine, caplog):
    with caplog.at_level(logging.INFO, logger="janus_demo"):
        assert engine.generator.probe_cuda_graphs() is False
    assert "not a CUDA device" in caplog.text
    engine.generate_images("a cat", num_images=1, seed=2)
    assert engine.generator.graphs_used is False


def test_rope_frequencies_stay_fp32_in_a_bf16_model_and_cfg_mixes_in_fp32(monkeypatch):
    engine = load_engine("tiny-random", device="cpu", dtype="bf16")
    rope = engine.model.model.language_model.rotary_emb
    assert engine.model.model.language_model.dtype == torch.bfloat16
    assert rope.inv_freq.dtype == torch.float32
    dim = rope.inv_freq.numel() * 2
    exact = 1.0 / (rope.config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
    assert torch.equal(rope.inv_freq, exact)  # not rounded through bf16
    dtypes = []
    choose = token_loop.choose_tokens
    monkeypatch.setattr(token_loop, "choose_tokens",
                        lambda logits, *a, **k: dtypes.append(logits.dtype) or choose(logits, *a, **k))
    run_loop(engine, use_cuda_graph=False)
    assert set(dtypes) == {torch.float32}


def test_free_memory_respects_a_per_process_cap(monkeypatch):
    """What a simulated 12 GB card (gpu_check.py) and a shared GPU rely on: the planner sees the cap."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, "memory_stats",
                        lambda device=None: {"reserved_bytes.all.current": 9 * gib, "allocated_bytes.all.current": 8 * gib})
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)
    assert memory.free_bytes(torch.device("cuda")) == 11 * gib  # free, plus cached but unused
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.5, raising=False)
    assert memory.free_bytes(torch.device("cuda")) == 4 * gib  # 12 GiB cap - 9 reserved + 1 cached
