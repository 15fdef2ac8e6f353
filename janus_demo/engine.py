"""The object the UI and the CLI talk to: one loaded model, two jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from PIL import Image

from .cancellation import CancelCheck
from .batching import SharedDecoder
from .chat import ChatResponder, ChatSettings
from .compare import CompareGrid, CompareResult, stream_grid
from .generation import GenerationResult, ImageGenerator, ImageRequest, Progress

ProgressCallback = Callable[[int, int, "list[Image.Image] | None"], None]


class JanusEngine:
    """A Janus model with its processor; `.model` and `.processor` are the transformers objects."""

    def __init__(self, model, processor, *, name: str, device: torch.device, precision) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.precision = precision
        self.responder = ChatResponder(model, processor)
        self.generator = ImageGenerator(model, processor, model_name=name)
        self._images: ImageGenerator | SharedDecoder = self.generator

    def share_decoding(self, enabled: bool = True) -> None:
        """Let image requests from concurrent callers that arrive together share one decoding
        loop (see batching.py): same images, far more of them per second on one device."""
        self._images = SharedDecoder(self.generator) if enabled else self.generator

    def image_stream(self, request: ImageRequest, *, cancel: CancelCheck = None,
                     preview_budget: float = 0.05) -> Iterator[Progress | GenerationResult]:
        """A validated request's progress events, then its result."""
        return self._images.stream(request, cancel=cancel, preview_budget=preview_budget)

    def compare_stream(self, grid: CompareGrid, *, cancel: CancelCheck = None,
                       preview_budget: float = 0.05) -> Iterator[Progress | CompareResult]:
        """A compare grid's progress (previews laid out as the grid), then its result: every cell
        in one decoding loop, each the image its settings draw alone."""
        return stream_grid(self.generator, grid, cancel=cancel, preview_budget=preview_budget)

    def __repr__(self) -> str:
        return f"JanusEngine({self.name!r}, device={self.device}, llm_dtype={self.precision.llm})"

    def chat(
        self,
        messages,
        *,
        temperature: float = 0.1,
        top_p: float = 0.95,
        max_new_tokens: int = 512,
        seed: int | None = None,
        cancel: CancelCheck = None,
    ) -> Iterator[str]:
        """Answer the last user message; yields text pieces that join into the answer.

        `messages` is the transformers chat format: `content` is a string, or a list of
        `{"type": "text", "text": ...}` and `{"type": "image", "image": PIL.Image}` parts.
        `temperature=0` is greedy. Bad input raises `InputError` here, before anything runs.
        """
        settings = ChatSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        inputs = self.responder.prepare(messages, settings)
        return self.responder.stream(inputs, settings, cancel=cancel)

    def iter_images(
        self, prompt: str, *, cancel: CancelCheck = None, preview_budget: float = 0.05, **options
    ) -> Iterator[Progress | GenerationResult]:
        """`generate_images` as a stream: a `Progress` per step, then the `GenerationResult`."""
        return self.image_stream(ImageRequest(prompt=prompt, **options), cancel=cancel, preview_budget=preview_budget)

    def generate_images(
        self,
        prompt: str,
        *,
        num_images: int = 4,
        cfg_scale: float = 5.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelCheck = None,
    ) -> GenerationResult:
        """Draw `num_images` 384x384 images; `.images`, `.tokens` (N x 576) and `.seed` describe them.

        `cfg_scale=1` skips the unconditional rows; `temperature=0` is greedy. `on_progress(step,
        total, preview)` is called after every step, `preview` being a list of partial images
        now and then. `cancel` (an Event or a callable) stops within one step with `Cancelled`.
        """
        stream = self.iter_images(
            prompt,
            cancel=cancel,
            num_images=num_images,
            cfg_scale=cfg_scale,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            negative_prompt=negative_prompt,
        )
        for event in stream:
            if isinstance(event, GenerationResult):
                return event
            if on_progress is not None:
                on_progress(event.step, event.total, event.preview)
        raise AssertionError("the image stream ended without a result")
