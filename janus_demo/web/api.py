"""The public API: /generate, /compare and /understand, and the official Janus-Pro Space's
/generate_image and /multimodal_understanding, so that scripts written for it work unchanged.

These endpoints have no widgets of their own: clients call them by name. Inputs are plain
numbers (no precision): Gradio's own int() would turn "abc" or NaN into a hidden error, while
the handlers refuse them, and 4.5 images, in words. An input's value is the parameter's
default for clients.
"""

from __future__ import annotations

import gradio as gr

from ..errors import InputError
from ..validation import MAX_MESSAGE_CHARS, check_number, check_text
from .chat import answer_stream, chat_settings, question_about
from .compare import compare_grid
from .errors import user_facing
from .events import Groups
from .gallery import gallery_stream, image_request
from .limits import CFG_RANGE, LIMITS, TEMPERATURE_RANGE

# Scripts written for DeepSeek's Janus-Pro Space (demo/app_januspro.py) call these two names
# with these parameters and defaults, and read exactly one output: a second one (such as the
# seed) would turn the result into a tuple and break `result[0]["image"]`.
OFFICIAL_IMAGES = 5
OFFICIAL_SCALE = 2  # 384 px shown at 768 px, enlarged with LANCZOS
OFFICIAL_MAX_NEW_TOKENS = 512


def add_endpoints(groups: Groups) -> None:
    """Hidden components and their named events, inside the Blocks being built."""
    with gr.Column(visible=False):
        images = [gr.Gallery(label="images", format="png"), gr.Number(label="seed", precision=0)]
        answer = gr.Textbox(label="answer")
        gr.Button().click(
            api_generate, [gr.Textbox(label="prompt"), gr.Number(label="num_images"), gr.Number(label="cfg_scale"),
                           gr.Number(label="temperature"), gr.Number(label="seed"),
                           gr.Textbox(label="negative_prompt")],
            images, api_name="generate", **groups.draw)
        gr.Button().click(
            api_compare, [gr.Textbox(label="prompt"), gr.Textbox(label="x_axis"), gr.Textbox(label="x_values"),
                          gr.Textbox(label="y_axis"), gr.Textbox(label="y_values"), gr.Number(5.0, label="cfg_scale"),
                          gr.Number(1.0, label="temperature"), gr.Number(label="seed"),
                          gr.Textbox(label="negative_prompt")],
            images, api_name="compare", **groups.draw)
        gr.Button().click(
            api_understand, [gr.File(label="image"), gr.Textbox(label="question"), gr.Number(label="temperature"),
                             gr.Number(label="top_p"), gr.Number(label="max_new_tokens"), gr.Number(label="seed")],
            answer, api_name="understand", **groups.gpu)
        # The official Space's two calls: its names, order and defaults.
        gr.Button().click(
            generate_image, [gr.Textbox(label="prompt"), gr.Number(1234, label="seed"), gr.Number(5, label="guidance"),
                             gr.Number(1.0, label="t2i_temperature")],
            images[0], api_name="generate_image", **groups.draw)
        gr.Button().click(
            multimodal_understanding, [gr.File(label="image"), gr.Textbox(label="question"),
                                       gr.Number(42, label="seed"), gr.Number(0.95, label="top_p"),
                                       gr.Number(0.1, label="temperature")],
            answer, api_name="multimodal_understanding", **groups.gpu)


# ----- what the endpoints call -----------------------------------------------------------
@user_facing
def api_generate(prompt: str, num_images: int = 4, cfg_scale: float = 5.0, temperature: float = 1.0, seed=None,
                 negative_prompt: str | None = None):
    """Draw `num_images` images: streams previews, ends with the PNGs (parameters in their metadata) and the seed."""
    request = image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed)
    for gallery, _, shown_seed in gallery_stream(request):
        yield gallery, shown_seed


@user_facing
def api_compare(prompt: str, x_axis: str, x_values: str, y_axis: str | None = None, y_values: str | None = None,
                cfg_scale: float = 5.0, temperature: float = 1.0, seed=None, negative_prompt: str | None = None):
    """A compare grid: the labelled grid image first, then each cell's PNG; and the seed."""
    grid = compare_grid(prompt, negative_prompt, cfg_scale, temperature, seed, False, x_axis, x_values, y_axis,
                        y_values)
    for gallery, _, shown_seed in gallery_stream(grid):
        yield gallery, shown_seed


@user_facing
def api_understand(image: str, question: str, temperature: float = 0.1, top_p: float = 0.95,
                   max_new_tokens: int = 512, seed=None):
    """Answer `question` about `image`; streams the answer as it grows."""
    settings = chat_settings(temperature, top_p, max_new_tokens, seed)
    if not image:
        raise InputError("Attach an image to ask about.")
    check_text("question", question, MAX_MESSAGE_CHARS)
    messages = question_about(image, question)
    answer = ""
    yield answer
    for piece in answer_stream(messages, settings):
        answer += piece
        yield answer


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
