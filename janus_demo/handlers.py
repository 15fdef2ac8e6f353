"""What the web app's events call: widget values in, engine work, widget values out.

Validation happens here, in the web server's process, before any GPU time is asked for;
every error a person can cause reaches the browser as one sentence (a `gr.Error`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import mimetypes
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from . import gpu_tasks
from .chat import ChatSettings, normalize_conversation
from .errors import InputError, JanusError
from .generation import GenerationResult, ImageRequest, Progress
from .images import open_image
from .validation import MAX_IMAGES, MAX_MESSAGE_CHARS, MAX_SEED, check_int, check_number, check_text

logger = logging.getLogger(__name__)

OUTPUT_ROOT = Path(tempfile.gettempdir()) / "janus_demo"  # PNGs with metadata, before Gradio serves them
OUTPUT_MAX_AGE_S = 24 * 3600
UPDATE_EVERY_S = 0.25  # progress text is sent to the browser at most this often
SERVER_FAULT = "Something went wrong on the server; please try again."

# What the app accepts, from the UI and the API alike (the sliders show the same ranges).
CFG_RANGE = (1.0, 10.0)
TEMPERATURE_RANGE = (0.0, 2.0)
MAX_NEW_TOKENS_RANGE = (1, 1024)


@dataclass
class Limits:
    """Per-deployment limits, set once by `ui.build_demo` from the app's flags."""

    max_images: int = 16
    time_limit_s: float = 900.0

    def __post_init__(self) -> None:
        check_int("--max-images", self.max_images, 1, MAX_IMAGES)
        check_number("--timeout", self.time_limit_s, 1, 24 * 3600)


LIMITS = Limits()


def user_facing(fn):
    """Turn our errors into `gr.Error` with their own sentence, and anything else into a generic
    one (logged with its traceback), for plain and generator functions alike."""

    def translate(exc: Exception) -> gr.Error:
        if isinstance(exc, JanusError):
            return gr.Error(str(exc), print_exception=False)
        logger.exception("request failed")
        return gr.Error(SERVER_FAULT, print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise translate(exc) from exc

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    return call


# ----- text to image ---------------------------------------------------------------------
def image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed=False):
    """An `ImageRequest` from widget values; a random seed is drawn here so it can be shown at once."""
    check_int("num_images", num_images, 1, LIMITS.max_images)
    check_number("cfg_scale", cfg_scale, *CFG_RANGE)
    check_number("temperature", temperature, *TEMPERATURE_RANGE)
    if randomize_seed or seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    return ImageRequest(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_images=num_images,
        cfg_scale=cfg_scale,
        temperature=temperature,
        seed=seed,
    )


def progress_text(event: Progress, elapsed: float) -> str:
    left = elapsed / event.step * (event.total - event.step)
    text = f"Step {event.step} / {event.total} · {elapsed:.0f} s elapsed · about {left:.0f} s left"
    return f"{text}\n\n{event.note}" if event.note else text


def save_outputs(result: GenerationResult) -> list[tuple[str, str]]:
    """Write the PNGs (parameters in their metadata) and return gallery items (path, caption)."""
    _remove_old_outputs()
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=OUTPUT_ROOT))
    paths = result.save(folder)
    return [(str(path), f"seed {result.seed} · #{i + 1}") for i, path in enumerate(paths)]


def _remove_old_outputs() -> None:
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for run in OUTPUT_ROOT.glob("run-*"):
        try:
            old = run.stat().st_mtime < cutoff
        except FileNotFoundError:  # another request removed it first
            continue
        if old:
            shutil.rmtree(run, ignore_errors=True)


def gallery_stream(request: ImageRequest) -> Iterator[tuple]:
    """(gallery, status, seed) updates: previews as rows complete, progress text at most every
    UPDATE_EVERY_S, the saved PNGs at the end; `gr.skip()` for widgets with nothing new.
    Something is yielded at every heartbeat of the model's thread, so a Stop or a closed tab
    can close this generator, and so stop the model, at once."""
    started = time.perf_counter()
    shown = -UPDATE_EVERY_S
    yield gr.skip(), f"Starting… seed {request.seed}", request.seed
    with closing(gpu_tasks.draw(request, LIMITS.time_limit_s)) as batches:
        for batch in batches:
            elapsed = time.perf_counter() - started
            result = next((e for e in batch if isinstance(e, GenerationResult)), None)
            if result is not None:
                count = len(result.images)
                done = f"Done: {count} image{'s' * (count > 1)} in {elapsed:.1f} s · seed {result.seed}"
                yield save_outputs(result), done, result.seed
                continue
            preview = next((e.preview for e in reversed(batch) if e.preview is not None), None)
            status = gr.skip()
            if batch and (preview is not None or elapsed - shown >= UPDATE_EVERY_S):
                shown = elapsed
                status = progress_text(batch[-1], elapsed)
            yield (preview if preview is not None else gr.skip()), status, gr.skip()


@user_facing
def draw(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed):
    """The Draw tab's Generate button."""
    request = image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed)
    yield from gallery_stream(request)


def stopped(status: str | None):
    """The status line after Stop (a run that had finished stays "Done"). It names the last step
    the page showed: the status is refreshed every UPDATE_EVERY_S, so the model may have gone a
    step or two further before the Stop reached it, and those steps are discarded anyway."""
    if status and status.startswith("Done"):
        return gr.skip()
    if status and status.startswith("Step "):
        return f"Stopped; the last step shown was {status.split(' · ')[0].removeprefix('Step ')}."
    return "Stopped."


@user_facing
def api_generate(prompt: str, num_images: int = 4, cfg_scale: float = 5.0, temperature: float = 1.0, seed=None):
    """Draw `num_images` images: streams previews, ends with the PNGs (parameters in their metadata) and the seed."""
    request = image_request(prompt, None, num_images, cfg_scale, temperature, seed)
    for gallery, _, shown_seed in gallery_stream(request):
        yield gallery, shown_seed


# ----- chat about images -----------------------------------------------------------------
def history_to_messages(history: list[dict]) -> list[dict]:
    """Chatbot history (typed blocks, one bubble per upload or text) -> transformers chat messages."""
    messages: list[dict] = []
    for entry in history:
        parts = []
        content = entry["content"]
        for block in content if isinstance(content, list) else [content]:
            if isinstance(block, str):
                parts.append({"type": "text", "text": block})
            elif block.get("type") == "text":
                parts.append({"type": "text", "text": block["text"]})
            elif block.get("type") == "file":
                parts.append({"type": "image", "image": open_image(block["file"]["path"])})
        if messages and messages[-1]["role"] == entry["role"]:
            messages[-1]["content"] += parts
        else:
            messages.append({"role": entry["role"], "content": parts})
    return messages


@user_facing
def add_user_message(history: list[dict], message: dict):
    """Append the new message as one bubble, once the conversation with it is one the model
    accepts (each upload a readable image, no more images than allowed)."""
    text = (message or {}).get("text") or ""
    files = (message or {}).get("files") or []
    if not text.strip() and not files:
        raise InputError("Type a question, or attach an image.")
    check_text("message", text, MAX_MESSAGE_CHARS, required=False)
    content = [{"type": "file", "file": {"path": path, "mime_type": mimetypes.guess_type(path)[0] or "image/png"}}
               for path in files]
    if text.strip():
        content.append({"type": "text", "text": text})
    history = [*history, {"role": "user", "content": content}]
    check_conversation(history_to_messages(history))  # refused here, the chat stays as it was
    return history, gr.MultimodalTextbox(value=None, interactive=False)


def chat_settings(temperature, top_p, max_new_tokens, seed) -> ChatSettings:
    check_number("temperature", temperature, *TEMPERATURE_RANGE)
    check_int("max_new_tokens", max_new_tokens, *MAX_NEW_TOKENS_RANGE)
    return ChatSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)


def check_conversation(messages: list[dict]) -> None:
    """Refuse a conversation the model would refuse (roles, text, image count) before any GPU
    time is asked for, and before anything is added to the chat."""
    normalize_conversation(messages, gpu_tasks.current().responder.control_tokens, "")


def answer_stream(messages: list[dict], settings: ChatSettings) -> Iterator[str]:
    """The answer to an already checked conversation, piece by piece."""
    with closing(gpu_tasks.answer(messages, settings, LIMITS.time_limit_s)) as pieces:
        yield from pieces


@user_facing
def respond(history: list[dict], temperature, top_p, max_new_tokens, seed, randomize_seed=False):
    """Stream the assistant's answer to the conversation into the chat."""
    settings = chat_settings(temperature, top_p, max_new_tokens, None if randomize_seed else seed)
    messages = history_to_messages(history)
    check_conversation(messages)
    answer = {"role": "assistant", "content": ""}
    history = [*history, answer]
    yield history
    for piece in answer_stream(messages, settings):
        answer["content"] += piece
        yield history


def retry(history: list[dict], temperature, top_p, max_new_tokens, seed, randomize_seed=False):
    """Answer the last user message again (drops the answers after it)."""
    while history and history[-1]["role"] == "assistant":
        history = history[:-1]
    yield from respond(history, temperature, top_p, max_new_tokens, seed, randomize_seed)


@user_facing
def api_understand(image: str, question: str, temperature: float = 0.1, top_p: float = 0.95,
                   max_new_tokens: int = 512, seed=None):
    """Answer `question` about `image`; streams the answer as it grows."""
    settings = chat_settings(temperature, top_p, max_new_tokens, seed)
    if not image:
        raise InputError("Attach an image to ask about.")
    check_text("question", question, MAX_MESSAGE_CHARS)
    messages = [{"role": "user", "content": [{"type": "image", "image": open_image(image)},
                                             {"type": "text", "text": question}]}]
    check_conversation(messages)
    answer = ""
    yield answer
    for piece in answer_stream(messages, settings):
        answer += piece
        yield answer
