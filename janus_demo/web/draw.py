"""The Draw tab: prompt and sliders, a live gallery, Stop, and our PNGs dropped back in to
restore their settings or redraw one image alone. The compare grid and Remix live in it too
(compare.py, handoffs.py)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..errors import InputError
from ..redraw import DrawnImage, read_drawn_image
from ..validation import MAX_SEED
from . import compare, gpu_tasks
from .errors import user_facing
from .events import PRIVATE, Groups
from .examples import prompt_examples
from .gallery import gallery_stream, image_request
from .limits import CFG_RANGE, LIMITS, TEMPERATURE_RANGE


@dataclass
class DrawTab:
    prompt: gr.Textbox
    negative: gr.Textbox
    num_images: gr.Slider
    cfg_scale: gr.Slider
    temperature: gr.Slider
    seed: gr.Number
    randomize: gr.Checkbox
    show_large: gr.Checkbox
    generate: gr.Button
    stop: gr.Button
    compare: compare.ComparePanel
    remix_image: gr.Image  # Remix (handoffs.py)
    describe: gr.Button
    redraw_file: gr.File
    redraw: gr.Button
    status: gr.Markdown
    gallery: gr.Gallery
    picked: gr.State  # the gallery item last clicked, for "Ask about this image"
    ask: gr.Button

    @property
    def inputs(self) -> list:
        """What `draw` takes, and a dropped PNG restores."""
        return [self.prompt, self.negative, self.num_images, self.cfg_scale, self.temperature, self.seed,
                self.randomize, self.show_large]

    @property
    def base(self) -> list:
        """What a compare grid starts from: all but the number of images and the display size."""
        return [self.prompt, self.negative, self.cfg_scale, self.temperature, self.seed, self.randomize]

    @property
    def outputs(self) -> list:
        """Where a drawing shows: the gallery, the status line, the seed it used."""
        return [self.gallery, self.status, self.seed]


def build(max_images: int) -> DrawTab:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                placeholder="A watercolor fox in the snow, soft morning light")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="draw-stop")
            num_images = gr.Slider(1, max_images, value=min(4, max_images), step=1, label="Parallel samples",
                                   elem_id="num-images")
            cfg_scale = gr.Slider(*CFG_RANGE, value=5, step=0.5, label="CFG scale (1 = off, twice as fast)",
                                  elem_id="cfg-scale")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="temperature")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
                randomize = gr.Checkbox(value=True, label="Random seed", elem_id="random-seed")
            show_large = gr.Checkbox(value=False, elem_id="show-768",
                                     label="Show at 768 px (the 384 px images enlarged ×2, LANCZOS)")
            with gr.Accordion("Advanced", open=False, elem_id="draw-advanced"):
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative",
                                      placeholder="What the images should avoid (replaces the empty prompt CFG compares with)")
            panel = compare.build()
            with gr.Accordion("Remix a picture", open=False, elem_id="remix-panel"):
                gr.Markdown("Upload a picture: the model describes it into the prompt above; edit the description, "
                            "then Generate draws variations of your picture.")
                remix_image = gr.Image(type="filepath", sources=["upload"], label="Your picture", height=200,
                                       elem_id="remix-image")
                describe = gr.Button("Describe it", elem_id="describe")
            redraw_file = gr.File(label="Drop one of our PNGs here: its settings come back", file_types=["image"],
                                  height=120, elem_id="redraw-file")
            redraw = gr.Button("Redraw alone", visible=False, elem_id="redraw")
            gr.Examples(prompt_examples(), inputs=[prompt], label="Example prompts", cache_examples=False)
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="status")
            gallery = gr.Gallery(label="Images", columns=4, height=560, format="png", elem_id="gallery",
                                 object_fit="contain", buttons=["download", "fullscreen"], interactive=False,
                                 type="filepath")  # contain: a grid is not square
            picked = gr.State(None)
            ask = gr.Button("Ask about this image", size="sm", elem_id="ask-about")
    return DrawTab(prompt, negative, num_images, cfg_scale, temperature, seed, randomize, show_large, generate, stop,
                   panel, remix_image, describe, redraw_file, redraw, status, gallery, picked, ask)


def wire(tab: DrawTab, groups: Groups) -> list:
    """The tab's events; returns those that Stop cancels."""
    drawing = gr.on([tab.generate.click, tab.prompt.submit], draw, tab.inputs, tab.outputs, **groups.draw, **PRIVATE)
    tab.redraw_file.upload(restore_settings, [tab.redraw_file], [*tab.inputs, tab.redraw, tab.status], **PRIVATE)
    tab.redraw_file.clear(lambda: gr.Button(visible=False), None, [tab.redraw], queue=False, **PRIVATE)
    redrawing = tab.redraw.click(redraw_alone, [tab.redraw_file, tab.show_large], [tab.gallery, tab.status],
                                 **groups.draw, **PRIVATE)
    return [drawing, redrawing]


# ----- what the events call --------------------------------------------------------------
@user_facing
def draw(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed, show_large=False):
    """The Generate button; `show_large` enlarges the results x2, as the official demo does."""
    request = image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed)
    yield from gallery_stream(request, scale=2 if show_large else 1)


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


PROGRESS = ("Starting", "Step ", "Describing")  # status lines of a run still going


def stopped(status: str | None):
    """The status line once Stop is clicked or a drawing's event ends: a progress line left
    behind (a run stopped, or failed: its error says why) becomes "Stopped", naming the last step
    the page showed; anything else ("Done", a restored PNG's settings) stays. The model may have
    gone a step or two further before the Stop reached it; those steps are discarded anyway."""
    if not status or not status.startswith(PROGRESS):
        return gr.skip()
    if status.startswith("Step "):
        return f"Stopped; the last step shown was {status.split(' · ')[0].removeprefix('Step ')}."
    return "Stopped."
