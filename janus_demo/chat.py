"""Image understanding: chat messages in, the answer's text out piece by piece.

Prompts are built exactly as the Hub processor builds them (default system prompt, chat
template, 576 placeholders per image) so greedy answers equal `model.generate` on
`processor.apply_chat_template(...)`. Sampling uses noise hashed from the request's seed
(sampling.py) instead of the global RNG, so a seed gives the same answer even while other
users are being served, on any machine.
"""

from __future__ import annotations

import copy
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

from .background import run_in_background
from .cancellation import CancelCheck, as_cancel_check
from .errors import InputError, OutOfMemory
from .images import open_image, to_rgb
from .memory import is_out_of_memory, release_memory
from .prompts import control_tokens, neutralize
from .sampling import choose_tokens
from .validation import (
    MAX_CHAT_IMAGES,
    MAX_MESSAGE_CHARS,
    MAX_NEW_TOKENS,
    MAX_SEED,
    check_int,
    check_number,
    check_text,
)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatSettings:
    """Sampling settings of one answer; validated on creation."""

    temperature: float = 0.1
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int | None = None

    def __post_init__(self) -> None:
        checked = {
            "temperature": check_number("temperature", self.temperature, 0.0, 100.0),
            "top_p": check_number("top_p", self.top_p, 0.0, 1.0, low_open=True),
            "max_new_tokens": check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS),
            "seed": None if self.seed is None else check_int("seed", self.seed, 0, MAX_SEED),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Conversation:
    """Messages in the template's shape, the images they reference, and the system prompt."""

    messages: list[dict]
    images: list[Image.Image]
    system_prompt: str


def _content_parts(content) -> list[Mapping]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Mapping):
        return [content]
    if isinstance(content, Iterable):
        return list(content)
    raise InputError("Each message's content must be text or a list of text and image parts.")


def _image_of(part: Mapping) -> Image.Image:
    source = part.get("image", part.get("path"))
    if isinstance(source, (str, os.PathLike, bytes)):
        source = open_image(source)
    if not isinstance(source, Image.Image):
        raise InputError("An image part must hold a PIL image (or a file path) under 'image'.")
    return to_rgb(source)


def normalize_conversation(messages, tokens: tuple[str, ...], default_system_prompt: str) -> Conversation:
    """Check roles and parts, defuse control tokens in text, and collect images in order."""
    if isinstance(messages, Mapping) or not isinstance(messages, Iterable) or isinstance(messages, str):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts.")
    out: list[dict] = []
    images: list[Image.Image] = []
    system_prompt = default_system_prompt
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise InputError(f"Message {index + 1} needs a role of 'user', 'assistant' or 'system'.")
        parts = []
        for part in _content_parts(message.get("content", "")):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                text = check_text(f"text of message {index + 1}", part.get("text"), MAX_MESSAGE_CHARS, required=False)
                parts.append({"type": "text", "text": neutralize(text, tokens)})
            elif kind == "image":
                images.append(_image_of(part))
                parts.append({"type": "image"})
            else:
                raise InputError(f"Message {index + 1} has a part of unknown type {kind!r}; use 'text' or 'image'.")
        if message["role"] == "system":
            if out:
                raise InputError("A system message may only come first.")
            text = " ".join(p["text"] for p in parts if p["type"] == "text").strip()
            system_prompt = f"{text}\n\n" if text else ""
            continue
        if not parts:
            parts = [{"type": "text", "text": ""}]
        out.append({"role": message["role"], "content": parts})
    if len(images) > MAX_CHAT_IMAGES:
        raise InputError(
            f"This conversation has {len(images)} images; the limit is {MAX_CHAT_IMAGES}. Clear the chat to start over."
        )
    if not out or out[-1]["role"] != "user":
        raise InputError("The conversation must end with a user message.")
    if not any(p["type"] == "image" or p["text"].strip() for p in out[-1]["content"]):
        raise InputError("Ask a question or attach an image.")
    return Conversation(out, images, system_prompt)


class _TokenStreamer(BaseStreamer):
    """Hands each new token id list from `generate` to `emit`; the prompt (the first put) is skipped."""

    def __init__(self, emit) -> None:
        self.emit = emit
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.emit(value.reshape(-1).tolist())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class _StopWhen(StoppingCriteria):
    def __init__(self, check) -> None:
        self.check = check

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.check(), dtype=torch.bool, device=input_ids.device)


class _SeededSampler(LogitsProcessor):
    """Samples with noise keyed by (seed, answer token index), then leaves only the pick for
    greedy search to take."""

    def __init__(self, settings: ChatSettings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self.step = 0

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        keys = torch.full((scores.shape[0],), self.seed, dtype=torch.long, device=scores.device)
        picked = choose_tokens(scores, keys, self.step, temperature=self.settings.temperature,
                               top_p=self.settings.top_p)
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picked.unsqueeze(-1), 0.0)


class ChatResponder:
    """Answers conversations about images with one loaded model."""

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.control_tokens = control_tokens(self.tokenizer)
        self.default_system_prompt = DEFAULT_SYSTEM_PROMPT if processor.use_default_system_prompt else ""
        self._raw_processor = copy.copy(processor)  # we prepend the system prompt ourselves
        self._raw_processor.use_default_system_prompt = False

    def prepare(self, messages, settings: ChatSettings) -> dict:
        """Model inputs for `messages`, refused if prompt and answer would not fit the context."""
        inputs = self.inputs(messages)
        prompt_tokens = inputs["input_ids"].shape[1]
        context = self.model.config.get_text_config().max_position_embeddings
        if prompt_tokens + settings.max_new_tokens > context:
            raise InputError(
                f"This conversation is {prompt_tokens} tokens long and the answer may add {settings.max_new_tokens}, "
                f"more than the model's {context}; clear the chat or lower max new tokens."
            )
        return inputs

    def inputs(self, messages) -> dict:
        """Model inputs for `messages`: the same as the Hub processor's apply_chat_template."""
        conversation = normalize_conversation(messages, self.control_tokens, self.default_system_prompt)
        text = self.processor.apply_chat_template(conversation.messages, add_generation_prompt=True)
        batch = self._raw_processor(
            text=conversation.system_prompt + text, images=conversation.images or None, return_tensors="pt"
        )
        vision_dtype = self.model.model.vision_model.dtype
        return {
            k: v.to(self.model.device, dtype=vision_dtype if k == "pixel_values" else None) for k, v in batch.items()
        }

    def stream(
        self, inputs: dict, settings: ChatSettings, *, cancel: CancelCheck = None, heartbeat: float = 0.1
    ) -> Iterator[str]:
        """Yield the answer to `inputs` (from `prepare()`) as text pieces as tokens come, and an
        empty piece after `heartbeat` seconds without one (see background.py); stopping early
        keeps what was said."""
        is_cancelled = as_cancel_check(cancel)
        processors = LogitsProcessorList()
        if settings.temperature > 0:
            seed = settings.seed if settings.seed is not None else secrets.randbelow(MAX_SEED + 1)
            processors.append(_SeededSampler(settings, seed))

        def work(emit, stop) -> None:
            with torch.inference_mode():
                # Janus' own generate() drops `logits_processor` in text mode (transformers
                # 5.24), so call the mixin it delegates to, with CFG off as it does.
                GenerationMixin.generate(
                    self.model,
                    **inputs,
                    guidance_scale=None,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=False,
                    streamer=_TokenStreamer(emit),
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([_StopWhen(lambda: stop.is_set() or is_cancelled())]),
                )

        ids: list[int] = []
        sent = 0
        try:
            for batch in run_in_background(work, every=heartbeat, eager=True, name="janus-chat"):
                ids += [token for new in batch for token in new]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                if len(text) > sent and not text.endswith("\ufffd"):  # wait for multi-byte characters
                    yield text[sent:]
                    sent = len(text)
                elif not batch:
                    yield ""
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        else:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > sent:
                yield text[sent:]
            return
        release_memory(self.model.device)  # outside the handler: the traceback no longer pins tensors
        raise OutOfMemory(
            "Ran out of memory while answering; use fewer or smaller images, lower max new tokens, or clear the chat."
        )
