"""The work that needs the GPU, in the shape ZeroGPU requires.

On a ZeroGPU Space, `@spaces.GPU` functions run in a forked worker that gets a GPU for the
call: their arguments are pickled, so they take only plain values (requests, messages, PIL
images) and find the model in this module's global, installed once at start-up. Each asks
for a duration computed from its request. Off Spaces the decorator does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import spaces

from .chat import ChatSettings
from .engine import JanusEngine
from .generation import GenerationResult, ImageRequest, Progress

# Budget per request on a ZeroGPU slice (eager bf16, Janus-Pro-7B): prefill, VQ decode and
# transfer overhead, plus the 576 decoding steps, which slow down as rows are added.
IMAGE_BASE_SECONDS = 20
IMAGE_SECONDS_PER_IMAGE = 4
ANSWER_BASE_SECONDS = 10
ANSWER_SECONDS_PER_TOKEN = 0.05
MAX_SECONDS = 300

_engine: JanusEngine | None = None


def install(engine: JanusEngine) -> None:
    """Make `engine` the one the GPU functions use (call once, before serving)."""
    global _engine
    _engine = engine


def current() -> JanusEngine:
    if _engine is None:
        raise RuntimeError("no engine installed; call janus_demo.gpu_tasks.install(engine) first")
    return _engine


def image_seconds(request: ImageRequest) -> int:
    return min(MAX_SECONDS, IMAGE_BASE_SECONDS + IMAGE_SECONDS_PER_IMAGE * request.num_images)


def answer_seconds(messages: list, settings: ChatSettings) -> int:
    return min(MAX_SECONDS, int(ANSWER_BASE_SECONDS + ANSWER_SECONDS_PER_TOKEN * settings.max_new_tokens))


@spaces.GPU(duration=image_seconds)
def draw(request: ImageRequest) -> Iterator[Progress | GenerationResult]:
    """Progress events, then the result, for an already validated request."""
    engine = current()
    yield from engine.generator.stream(request)


@spaces.GPU(duration=answer_seconds)
def answer(messages: list, settings: ChatSettings) -> Iterator[str]:
    """The streamed answer to `messages` (transformers chat format, PIL images)."""
    engine = current()
    yield from engine.responder.stream(engine.responder.inputs(messages), settings)
