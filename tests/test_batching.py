"""Concurrent image requests sharing one decoding loop: same images, own progress, own fate."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from janus_demo import Cancelled, GenerationResult, ImageRequest
from janus_demo.batching import SharedDecoder
from janus_demo.generation import ImageGenerator

pytestmark = pytest.mark.seeds  # CI reruns these with the other CPU family's kernels (AVX2)

# Prompts of equal token length (17): no padding, so a shared loop rounds exactly like a loop of its own.
SAME_LENGTH = ["a red fox in the snow", "a red fox in the sun", "a red fox in the snow"]
MIXED_LENGTHS = ["a red fox in the snow", "a lighthouse", "two boats on a calm lake at night, oil painting"]


@pytest.fixture
def shared(engine, monkeypatch):
    """A shared decoder whose loops are recorded as lists of (prompt, images) per loop."""
    loops: list[list[tuple[str, int]]] = []
    original = ImageGenerator.decode_slices

    def recording(self, slices, **kwargs):
        loops.append([(part.request.prompt, part.count) for part in slices])
        return original(self, slices, **kwargs)

    monkeypatch.setattr(ImageGenerator, "decode_slices", recording)
    decoder = SharedDecoder(engine.generator, wait_s=0.2)
    decoder.loops = loops
    return decoder


def run_together(decoder, requests, cancel=None):
    """Each request in its own thread, all at once; returns each one's events."""
    events = [[] for _ in requests]
    errors: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def user(index):
        start.wait()
        try:
            for event in decoder.stream(requests[index], cancel=(cancel or {}).get(index)):
                events[index].append(event)
        except Exception as exc:
            errors[index] = exc

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return events, errors


def test_requests_arriving_together_share_a_loop_and_get_their_own_images(engine, shared):
    requests = [ImageRequest(p, num_images=n, seed=10 * i) for i, (p, n) in enumerate(zip(SAME_LENGTH, [2, 1, 3]))]
    events, errors = run_together(shared, requests)
    assert errors == [None, None, None]
    assert sorted(map(sorted, shared.loops)) == [sorted((r.prompt, r.num_images) for r in requests)]
    for request, own in zip(requests, events):
        result = own[-1]
        assert isinstance(result, GenerationResult) and result.seed == request.seed
        assert result.params["prompt"] == request.prompt and len(result.images) == request.num_images
        alone = engine.generate_images(request.prompt, num_images=request.num_images, seed=request.seed)
        assert torch.equal(result.tokens, alone.tokens), "the same images as a loop of its own"
        steps = [e.step for e in own[:-1]]
        assert steps == list(range(1, 577))
        assert any(e.preview is not None and len(e.preview) == request.num_images for e in own[:-1])


def test_prompts_of_different_lengths_share_too_and_each_gets_its_own_result(engine, shared):
    """Shorter prompts are left-padded; the padded cache may round differently, so equality with a
    loop of its own is only up to a rare flipped draw (see README); the result is still theirs."""
    requests = [ImageRequest(p, num_images=2, seed=7 * i) for i, p in enumerate(MIXED_LENGTHS)]
    events, errors = run_together(shared, requests)
    assert errors == [None, None, None] and len(shared.loops) == 1
    for request, own in zip(requests, events):
        result = own[-1]
        assert result.params["prompt"] == request.prompt and result.seed == request.seed
        assert result.tokens.shape == (2, 576)


def test_different_sampling_settings_do_not_share(engine, shared):
    requests = [ImageRequest("a cat", num_images=1, seed=1), ImageRequest("a dog", num_images=1, seed=2, cfg_scale=3)]
    _, errors = run_together(shared, requests)
    assert errors == [None, None]
    assert sorted(len(loop) for loop in shared.loops) == [1, 1]


def test_one_user_cancelling_does_not_stop_the_others(engine, shared):
    stop = threading.Event()
    requests = [ImageRequest("a cat", num_images=1, seed=1), ImageRequest("a dog", num_images=2, seed=2)]
    watcher = threading.Timer(1.0, stop.set)
    watcher.start()
    events, errors = run_together(shared, requests, cancel={0: stop})
    assert isinstance(errors[0], Cancelled)
    assert errors[1] is None and isinstance(events[1][-1], GenerationResult)
    assert len(shared.loops) == 1 and len(shared.loops[0]) == 2


def test_engine_share_decoding_routes_through_the_shared_loop(engine):
    engine.share_decoding(True)
    try:
        assert isinstance(engine._images, SharedDecoder)
        result = engine.generate_images("a cat", num_images=2, seed=3)
    finally:
        engine.share_decoding(False)
    assert torch.equal(result.tokens, engine.generate_images("a cat", num_images=2, seed=3).tokens)


def test_a_request_cancelled_while_waiting_for_its_loop_stops_at_once(engine, shared):
    """It is not in any loop yet, so nothing else would ever tell its consumer to stop waiting."""
    busy = threading.Thread(target=lambda: list(shared.stream(ImageRequest("a cat", num_images=4, seed=1))))
    busy.start()
    while not shared.loops:
        time.sleep(0.01)
    stop = threading.Event()
    waiting = shared.stream(ImageRequest("a dog", num_images=1, seed=2, cfg_scale=3), cancel=stop)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        list(waiting)
    assert time.monotonic() - started < 2.0
    assert busy.is_alive(), "it stopped while the other loop was still running"
    busy.join(timeout=120)
    assert len(shared.loops) == 1, "the cancelled request never got a loop"


def test_the_oldest_request_runs_first_even_when_it_needs_more_than_fits(engine, shared, monkeypatch):
    monkeypatch.setattr(ImageGenerator, "images_that_fit", lambda self, request, tokens, most=None: 2)
    results = {}

    def user(request):
        results[request.prompt] = list(shared.stream(request))[-1]

    oldest = threading.Thread(target=user, args=(ImageRequest("a big batch", num_images=4, seed=1),))
    oldest.start()
    time.sleep(0.05)  # within the loop's wait for companions: both are waiting when it starts
    user(ImageRequest("a small one", num_images=1, seed=2))
    oldest.join(timeout=120)
    assert shared.loops[0] == [("a big batch", 2)], "the oldest request (in memory-sized chunks) went first"
    assert len(results["a big batch"].images) == 4 and len(results["a small one"].images) == 1
