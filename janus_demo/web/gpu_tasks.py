"""The work that needs the GPU, in the shape ZeroGPU requires.

On a ZeroGPU Space, `@spaces.GPU` functions run in a forked worker that gets a GPU for the
call: their arguments are pickled, so they take only plain values (requests, messages, PIL
images) and find the model in this module's global, installed once at start-up. Each asks
for a duration computed from its request. Off Spaces the decorator does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import spaces

from ..background import run_in_background
from ..chat import ChatSettings
from ..compare import CompareGrid, CompareResult
from ..engine import JanusEngine
from ..errors import Cancelled, TimedOut
from ..generation import GenerationResult, ImageRequest, Progress
from ..loading import on_zerogpu

# Budget per request on a ZeroGPU slice (eager bf16, Janus-Pro-7B): prefill, VQ decode and
# transfer overhead, plus the 576 decoding steps, which slow down as rows are added.
IMAGE_BASE_SECONDS = 20
IMAGE_SECONDS_PER_IMAGE = 4
ANSWER_BASE_SECONDS = 10
ANSWER_SECONDS_PER_TOKEN = 0.05
ANSWER_SECONDS_PER_IMAGE = 3  # the vision encoder, and 576 more prompt tokens to prefill
MAX_SECONDS = 300
ZEROGPU_MARGIN_S = 3  # on ZeroGPU, stop this long before the lease ends, to say why ourselves
BEAT_S = 0.1  # results reach the web server this often; a Stop or a closed tab reaches the model as fast

_engine: JanusEngine | None = None


def install(engine: JanusEngine) -> None:
    """Make `engine` the one the GPU functions use (call once, before serving)."""
    global _engine
    _engine = engine


def current() -> JanusEngine:
    if _engine is None:
        raise RuntimeError("no engine installed; call janus_demo.web.gpu_tasks.install(engine) first")
    return _engine


def time_limit(duration_s: int, time_limit_s: float) -> float:
    """Seconds a call may run: the app's limit, or on ZeroGPU the lease it asked for, less a
    margin, since ZeroGPU ends an overrunning call with an error of its own."""
    if on_zerogpu():
        return max(1.0, min(time_limit_s, duration_s - ZEROGPU_MARGIN_S))
    return time_limit_s


def image_seconds(job: ImageRequest | CompareGrid, time_limit_s: float) -> int:
    estimate = IMAGE_BASE_SECONDS + IMAGE_SECONDS_PER_IMAGE * job.num_images
    return int(min(MAX_SECONDS, time_limit_s, estimate))


def image_parts(messages: list) -> int:
    """How many images the conversation holds (transformers chat format, text-only content as a string)."""
    return sum(1 for message in messages if not isinstance(message["content"], str)
               for part in message["content"] if part.get("type") == "image")


def answer_seconds(messages: list, settings: ChatSettings, time_limit_s: float) -> int:
    estimate = (ANSWER_BASE_SECONDS + ANSWER_SECONDS_PER_TOKEN * settings.max_new_tokens
                + ANSWER_SECONDS_PER_IMAGE * image_parts(messages))
    return int(min(MAX_SECONDS, time_limit_s, estimate))


@spaces.GPU(duration=image_seconds)
def draw(job: ImageRequest | CompareGrid, time_limit_s: float) -> Iterator[list[Progress | GenerationResult
                                                                                  | CompareResult]]:
    """Batches of progress events, the result last, for an already validated request or grid.

    The model runs in a thread of its own and a batch (maybe empty) comes every BEAT_S, so
    closing this generator (Stop, a closed tab) reaches the model within a beat.
    """
    engine = current()
    limit = time_limit(image_seconds(job, time_limit_s), time_limit_s)
    deadline = time.monotonic() + limit
    stream = engine.compare_stream if isinstance(job, CompareGrid) else engine.image_stream

    def work(emit, stop) -> None:
        for event in stream(job, cancel=lambda: stop.is_set() or time.monotonic() > deadline):
            emit(event)

    try:
        yield from run_in_background(work, every=BEAT_S, name="janus-draw")
    except Cancelled:
        raise TimedOut(
            f"Drawing ran past the {limit:.0f} s time limit and was stopped; "
            "try fewer images or CFG scale 1 (twice as fast)."
        ) from None


@spaces.GPU(duration=answer_seconds)
def answer(messages: list, settings: ChatSettings, time_limit_s: float) -> Iterator[str]:
    """The streamed answer to `messages` (transformers chat format, PIL images): pieces as they
    come, an empty one after BEAT_S without news; cut at the time limit."""
    engine = current()
    limit = time_limit(answer_seconds(messages, settings, time_limit_s), time_limit_s)
    deadline = time.monotonic() + limit
    inputs = engine.responder.prepare(messages, settings)
    yield from engine.responder.stream(
        inputs, settings, cancel=lambda: time.monotonic() > deadline, heartbeat=BEAT_S
    )
    if time.monotonic() > deadline:
        raise TimedOut(f"The answer ran past the {limit:.0f} s time limit and was cut short.")
