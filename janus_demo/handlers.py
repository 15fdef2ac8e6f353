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
from .compare import AXES, Axis, CompareGrid, CompareResult
from .errors import InputError, JanusError
from .generation import GenerationResult, ImageRequest, Progress
from .images import open_image, save_png
from .redraw import DrawnImage, read_drawn_image
from .validation import (MAX_IMAGES, MAX_MESSAGE_CHARS, MAX_PROMPT_CHARS, MAX_SEED, check_int, check_number,
                         check_text)

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


def compare_grid(prompt, negative_prompt, cfg_scale, temperature, seed, randomize_seed, x_axis, x_values,
                 y_axis=None, y_values=None) -> CompareGrid:
    """A `CompareGrid` from widget values: the Draw tab's settings, varied along one or two axes.
    Refused in one sentence, before any work, when a value is out of range or the grid holds
    more images than one request may."""
    axes = [Axis.parse(x_axis, x_values)] + ([Axis.parse(y_axis, y_values)] if y_axis else [])
    ranges = {"cfg_scale": CFG_RANGE, "temperature": TEMPERATURE_RANGE}
    for axis in axes:
        for value in axis.values if axis.name in ranges else ():
            check_number(AXES[axis.name], value, *ranges[axis.name])
    prompts = next((axis.values for axis in axes if axis.name == "prompt"), None)
    base = image_request(prompts[0] if prompts else prompt, negative_prompt, 1, cfg_scale, temperature, seed,
                         randomize_seed)
    grid = CompareGrid(base, *axes)
    rows, columns = grid.shape
    if grid.num_images > LIMITS.max_images:
        raise InputError(f"A {rows} by {columns} grid is {grid.num_images} images, but this app draws at most "
                         f"{LIMITS.max_images} per request; use fewer values.")
    return grid


def progress_text(event: Progress, elapsed: float) -> str:
    left = elapsed / event.step * (event.total - event.step)
    text = f"Step {event.step} / {event.total} · {elapsed:.0f} s elapsed · about {left:.0f} s left"
    return f"{text}\n\n{event.note}" if event.note else text


def save_outputs(result: GenerationResult, scale: int = 1) -> list[tuple[str, str]]:
    """Write the PNGs (parameters in their metadata; enlarged `scale` times) and return gallery
    items (path, caption)."""
    folder = _new_output_folder()
    paths = result.save(folder, scale=scale)
    return [(str(path), f"seed {result.seed} · #{i + 1}") for i, path in enumerate(paths)]


def save_grid_outputs(result: CompareResult, scale: int = 1) -> list[tuple[str, str]]:
    """The labelled grid first, then each cell's PNG (its own parameters in its metadata)."""
    folder = _new_output_folder()
    grid = save_png(result.image, folder / f"grid_{result.grid.base.seed}.png", result.params(), scale=scale)
    rows, columns = result.grid.shape
    items = [(str(grid), f"{rows} by {columns} grid")]
    for k, (cell, request) in enumerate(zip(result.cells, result.grid.cells())):
        [path] = cell.save(folder, stem=f"cell{k + 1}", scale=scale)
        items.append((str(path), result.grid.caption(request)))
    return items


def _new_output_folder() -> Path:
    """A fresh folder for one run's PNGs, after clearing runs older than OUTPUT_MAX_AGE_S."""
    _remove_old_outputs()
    return Path(tempfile.mkdtemp(prefix="run-", dir=OUTPUT_ROOT))


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


def gallery_stream(job: ImageRequest | CompareGrid, scale: int = 1) -> Iterator[tuple]:
    """(gallery, status, seed) updates: previews as rows complete, progress text at most every
    UPDATE_EVERY_S, the saved PNGs (enlarged `scale` times) at the end; `gr.skip()` for widgets
    with nothing new.
    Something is yielded at every heartbeat of the model's thread, so a Stop or a closed tab
    can close this generator, and so stop the model, at once."""
    started = time.perf_counter()
    shown = -UPDATE_EVERY_S
    seed = job.base.seed if isinstance(job, CompareGrid) else job.seed
    yield gr.skip(), f"Starting… seed {seed}", seed
    with closing(gpu_tasks.draw(job, LIMITS.time_limit_s)) as batches:
        for batch in batches:
            elapsed = time.perf_counter() - started
            result = next((e for e in batch if isinstance(e, (GenerationResult, CompareResult))), None)
            if isinstance(result, CompareResult):
                rows, columns = result.grid.shape
                yield (save_grid_outputs(result, scale),
                       f"Done: a {rows} by {columns} grid in {elapsed:.1f} s · seed {seed}", seed)
                continue
            if result is not None:
                count = len(result.images)
                done = f"Done: {count} image{'s' * (count > 1)} in {elapsed:.1f} s · seed {result.seed}"
                yield save_outputs(result, scale), done, result.seed
                continue
            preview = next((e.preview for e in reversed(batch) if e.preview is not None), None)
            status = gr.skip()
            if batch and (preview is not None or elapsed - shown >= UPDATE_EVERY_S):
                shown = elapsed
                status = progress_text(batch[-1], elapsed)
            yield (preview if preview is not None else gr.skip()), status, gr.skip()


@user_facing
def draw(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed, show_large=False):
    """The Draw tab's Generate button; `show_large` enlarges the results x2, as the official demo does."""
    request = image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed)
    yield from gallery_stream(request, scale=2 if show_large else 1)


@user_facing
def draw_grid(prompt, negative_prompt, cfg_scale, temperature, seed, randomize_seed, x_axis, x_values, y_axis,
              y_values, show_large=False):
    """The Draw tab's "Draw the grid" button: its settings varied along the chosen axes."""
    grid = compare_grid(prompt, negative_prompt, cfg_scale, temperature, seed, randomize_seed, x_axis, x_values,
                        y_axis, y_values)
    yield from gallery_stream(grid, scale=2 if show_large else 1)


@user_facing
def api_compare(prompt: str, x_axis: str, x_values: str, y_axis: str | None = None, y_values: str | None = None,
                cfg_scale: float = 5.0, temperature: float = 1.0, seed=None, negative_prompt: str | None = None):
    """A compare grid: the labelled grid image first, then each cell's PNG; and the seed."""
    grid = compare_grid(prompt, negative_prompt, cfg_scale, temperature, seed, False, x_axis, x_values, y_axis,
                        y_values)
    for gallery, _, shown_seed in gallery_stream(grid):
        yield gallery, shown_seed


def drawn_image(path: str | None) -> DrawnImage:
    """What a dropped PNG says about itself, if this app's model drew it."""
    if not path:
        raise InputError("Drop one of this demo's PNGs on the Draw tab first.")
    drawn = read_drawn_image(path)
    drawn.check_model(gpu_tasks.current().name)
    return drawn


@user_facing
def restore_settings(path: str | None):
    """A PNG dropped on the Draw tab: its settings back in the widgets (Generate then draws its
    whole batch again), and a button that redraws that one image alone."""
    drawn = drawn_image(path)
    request, number = drawn.request, drawn.index + 1
    status = (f"Settings of image #{number} of {request.num_images} (seed {request.seed}) restored. "
              f"**Generate** draws the whole batch again; **Redraw #{number} alone** draws just that image.")
    return (request.prompt, request.negative_prompt or "", min(request.num_images, LIMITS.max_images),
            request.cfg_scale, request.temperature, request.seed, False, drawn.scale == 2,
            gr.Button(f"Redraw #{number} alone", visible=True), status)


@user_facing
def redraw_alone(path: str | None, show_large: bool = False):
    """Draw the dropped PNG's image by itself (its seed + its index, one image): the same pixels."""
    for gallery, status, _ in gallery_stream(drawn_image(path).alone(), scale=2 if show_large else 1):
        yield gallery, status


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
def api_generate(prompt: str, num_images: int = 4, cfg_scale: float = 5.0, temperature: float = 1.0, seed=None,
                 negative_prompt: str | None = None):
    """Draw `num_images` images: streams previews, ends with the PNGs (parameters in their metadata) and the seed."""
    request = image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed)
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


# ----- hand-offs between the tabs --------------------------------------------------------
REMIX_QUESTION = ("Describe this picture as a prompt for an image generator: its subject, setting, colours, "
                  "light and style, in one paragraph.")
REMIX_MAX_NEW_TOKENS = 200


def picked_image(gallery: list | None, event: gr.SelectData) -> str | None:
    """The file of the gallery item just clicked (a final PNG or a compare grid)."""
    items = gallery or []
    return items[event.index][0] if isinstance(event.index, int) and event.index < len(items) else None


@user_facing
def ask_about(picked: str | None):
    """"Ask about this image": the chat tab, with the picture attached to a new message; the
    conversation so far and the chat settings stay as they were."""
    if not picked:
        raise InputError("Click one of the images first, then ask about it.")
    return gr.MultimodalTextbox(value={"text": "", "files": [picked]}, interactive=True), gr.Tabs(selected="chat")


@user_facing
def draw_this(history: list[dict], selected: str | None):
    """"Draw this": the text selected in the chat, else the last answer, becomes the Draw tab's
    prompt (its other settings stay)."""
    text = (selected or "").strip()
    if not text:
        answers = [text_of(entry["content"]) for entry in history or [] if entry["role"] == "assistant"]
        text = next((answer for answer in reversed(answers) if answer), "")
    if not text:
        raise InputError("There is no answer to draw yet; ask something first, or select some text.")
    return text[:MAX_PROMPT_CHARS], gr.Tabs(selected="draw")


def text_of(content) -> str:
    """The text of a chat message, whether a string or a list of typed blocks (as the Chatbot sends it back)."""
    blocks = content if isinstance(content, list) else [content]
    return "".join(b if isinstance(b, str) else b.get("text", "") for b in blocks
                   if isinstance(b, str) or b.get("type") == "text").strip()


@user_facing
def describe_for_remix(image: str | None):
    """Remix, step one: the model describes the uploaded picture into the Draw prompt (streamed),
    for the user to edit before drawing variations of it."""
    if not image:
        raise InputError("Upload a picture to remix first.")
    messages = [{"role": "user", "content": [{"type": "image", "image": open_image(image)},
                                             {"type": "text", "text": REMIX_QUESTION}]}]
    check_conversation(messages)
    settings = ChatSettings(temperature=0, top_p=0.95, max_new_tokens=REMIX_MAX_NEW_TOKENS, seed=None)
    description = ""
    yield description, "Describing your picture…"
    for piece in answer_stream(messages, settings):
        description += piece
        yield description[:MAX_PROMPT_CHARS], gr.skip()
    yield gr.skip(), ("Described. Edit the prompt if you like, then **Generate** draws variations of your picture "
                      "from it.")


# ----- the official demo's API -----------------------------------------------------------
# Scripts written for DeepSeek's Janus-Pro Space (demo/app_januspro.py) call these two names
# with these parameters and defaults, and read exactly one output: a second one (such as the
# seed) would turn the result into a tuple and break `result[0]["image"]`.
OFFICIAL_IMAGES = 5
OFFICIAL_SCALE = 2  # 384 px shown at 768 px, enlarged with LANCZOS
OFFICIAL_MAX_NEW_TOKENS = 512


@user_facing
def generate_image(prompt: str, seed=1234, guidance: float = 5, t2i_temperature: float = 1.0):
    """The official Space's text to image: a gallery of 5 images at 768x768 (previews on the way)."""
    if LIMITS.max_images < OFFICIAL_IMAGES:
        raise InputError(f"/generate_image always draws {OFFICIAL_IMAGES} images, but this app draws at most "
                         f"{LIMITS.max_images} per request; call /generate instead.")
    check_number("guidance", guidance, *CFG_RANGE)  # in the caller's words, before image_request's
    check_number("t2i_temperature", t2i_temperature, *TEMPERATURE_RANGE)
    request = image_request(prompt, None, OFFICIAL_IMAGES, guidance, t2i_temperature, seed)
    for gallery, _, _ in gallery_stream(request, scale=OFFICIAL_SCALE):
        yield gallery


def multimodal_understanding(image: str, question: str, seed=42, top_p: float = 0.95, temperature: float = 0.1):
    """The official Space's understanding call: the answer (at most 512 new tokens) as one string."""
    yield from api_understand(image, question, temperature, top_p, OFFICIAL_MAX_NEW_TOKENS, seed)
