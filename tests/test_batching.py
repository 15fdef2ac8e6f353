"""Concurrent image requests sharing one decoding loop: same images, own progress, own fate."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from janus_demo import Cancelled, GenerationResult, ImageRequest
from janus_demo.batching import SharedDecoder
from janus_demo.generation import ImageGenerator, Progress

# @pytest.mark.seeds: CI reruns the test with the other CPU family's kernels (AVX2).

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


def run_together(decoder, requests, stop_at=None, cancel=None):
    """Each request in its own thread, all at once; returns each one's events. `stop_at` maps a
    request's index to the step at which its user presses Stop (seen in its own progress);
    `cancel`, to a cancel event of the test's own."""
    events = [[] for _ in requests]
    errors: list = [None] * len(requests)
    start = threading.Barrier(len(requests))
    stops = [(cancel or {}).get(i) or threading.Event() for i in range(len(requests))]

    def user(index):
        start.wait()
        try:
            for event in decoder.stream(requests[index], cancel=stops[index]):
                events[index].append(event)
                if isinstance(event, Progress) and event.step == (stop_at or {}).get(index):
                    stops[index].set()
        except Exception as exc:
            errors[index] = exc

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 800  # for a stuck loop; a loaded 2-core CPU may take minutes
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a request still running after 800 s"
    return events, errors


@pytest.mark.seeds
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


@pytest.mark.seeds
def test_other_cfg_scales_and_temperatures_share_a_loop_and_keep_their_images(engine, shared):
    """CFG scale and temperature are per image inside the loop, so they do not split users."""
    requests = [ImageRequest(SAME_LENGTH[0], num_images=1, seed=1),
                ImageRequest(SAME_LENGTH[1], num_images=2, seed=2, cfg_scale=3, temperature=0.5)]
    events, errors = run_together(shared, requests)
    assert errors == [None, None] and len(shared.loops) == 1 and len(shared.loops[0]) == 2
    for request, own in zip(requests, events):
        alone = engine.generate_images(request.prompt, num_images=request.num_images, seed=request.seed,
                                       cfg_scale=request.cfg_scale, temperature=request.temperature)
        assert torch.equal(own[-1].tokens, alone.tokens), "the same images as a loop of its own"


def test_cfg_on_and_off_or_other_top_k_do_not_share(engine, shared):
    """CFG off has no unconditional rows (the memory estimate differs); top-k filters every row alike."""
    requests = [ImageRequest("a cat", num_images=1, seed=1), ImageRequest("a dog", num_images=1, seed=2, cfg_scale=1),
                ImageRequest("a cow", num_images=1, seed=3, top_k=50)]
    _, errors = run_together(shared, requests)
    assert errors == [None, None, None]
    assert sorted(len(loop) for loop in shared.loops) == [1, 1, 1]


def test_one_user_cancelling_does_not_stop_the_others(engine, shared):
    requests = [ImageRequest("a cat", num_images=1, seed=1), ImageRequest("a dog", num_images=2, seed=2)]
    events, errors = run_together(shared, requests, stop_at={0: 100})
    assert isinstance(errors[0], Cancelled) and events[0][-1].step == 100  # not one step more reached it
    assert errors[1] is None and isinstance(events[1][-1], GenerationResult)
    assert len(shared.loops) == 1 and len(shared.loops[0]) == 2


@pytest.mark.seeds
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
    stop = threading.Event()
    busy_steps: list[int] = []

    def busy_user():
        for event in shared.stream(ImageRequest("a cat", num_images=4, seed=1)):
            busy_steps.append(getattr(event, "step", 576))
            if busy_steps[-1] == 10:  # the other user presses Stop while this loop is at step 10
                stop.set()

    busy = threading.Thread(target=busy_user)
    busy.start()
    assert stop.wait(timeout=120), "the busy loop never reached step 10"
    waiting = shared.stream(ImageRequest("a dog", num_images=1, seed=2, cfg_scale=3), cancel=stop)
    with pytest.raises(Cancelled):
        list(waiting)
    assert busy_steps[-1] < 576, "it stopped while the other loop was still running"
    busy.join(timeout=120)
    assert len(shared.loops) == 1, "the cancelled request never got a loop"


@pytest.mark.seeds
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


def test_a_stop_during_the_shared_final_decode_stops_that_request_before_its_next_batch(engine, shared, monkeypatch):
    original = engine.model.decode_image_tokens
    calls: list[int] = []
    stop = threading.Event()

    def decode_then_stop(tokens):
        calls.append(len(tokens))
        if len(calls) == 1:
            stop.set()  # the first user presses Stop during the first decode (theirs or the other's)
        return original(tokens)

    monkeypatch.setattr(engine.model, "decode_image_tokens", decode_then_stop)
    requests = [ImageRequest("a cat", num_images=5, seed=1, cfg_scale=1), ImageRequest("a dog", num_images=1, seed=2,
                                                                                      cfg_scale=1)]
    events, errors = run_together(shared, requests, cancel={0: stop})
    assert len(shared.loops) == 1 and len(shared.loops[0]) == 2  # decoded together
    assert isinstance(errors[0], Cancelled)
    # The VQ decoder takes one image at a time (generation.DECODE_BATCH). Whichever request is
    # decoded first, at most one of the first user's 5 images is decoded after the Stop; the
    # second user's image is, and the first user hears Cancelled (no wait for a result).
    assert calls in ([1, 1], [1]), f"decoded after the Stop: {calls}"
    assert errors[1] is None and len(events[1][-1].images) == 1


@pytest.mark.seeds
def test_a_shared_loop_that_runs_out_of_memory_is_redrawn_in_halves(engine, shared, monkeypatch):
    language_model = engine.model.model.language_model
    original = language_model.forward
    failed: list[int] = []

    def fail_when_together(*args, **kwargs):
        if kwargs["inputs_embeds"].shape[0] == 8 and not failed:  # 2 users x 2 images x (cond, uncond)
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(language_model, "forward", fail_when_together)
    requests = [ImageRequest(SAME_LENGTH[0], num_images=2, seed=5), ImageRequest(SAME_LENGTH[1], num_images=2, seed=6)]
    events, errors = run_together(shared, requests)
    assert failed and errors == [None, None]
    assert [len(loop) for loop in shared.loops] == [2, 1, 1]  # together, then each alone
    for request, own in zip(requests, events):
        alone = engine.generate_images(request.prompt, num_images=2, seed=request.seed)
        assert torch.equal(own[-1].tokens, alone.tokens), "the same images as a loop of its own"
