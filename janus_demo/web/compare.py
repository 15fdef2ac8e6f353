"""The compare grid (an accordion of the Draw tab): the Draw tab's settings varied along one or
two axes, one image per cell, all drawn in one loop."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..compare import AXES, Axis, CompareGrid
from ..errors import InputError
from ..validation import check_number
from .errors import user_facing
from .events import PRIVATE, Groups
from .gallery import gallery_stream, image_request
from .limits import CFG_RANGE, LIMITS, TEMPERATURE_RANGE


@dataclass
class ComparePanel:
    x_axis: gr.Dropdown
    x_values: gr.Textbox
    y_axis: gr.Dropdown
    y_values: gr.Textbox
    button: gr.Button


def build() -> ComparePanel:
    with gr.Accordion("Compare grid", open=False, elem_id="compare-panel"):
        gr.Markdown("The settings above, varied along one or two axes: one image per cell, all drawn in one loop. "
                    "Numbers: separated by commas; prompts: one per line.")
        axes = [(label, name) for name, label in AXES.items()]
        with gr.Row():
            x_axis = gr.Dropdown(axes, value="cfg_scale", label="Across", elem_id="x-axis")
            x_values = gr.Textbox("3, 5, 7", label="Values", lines=2, elem_id="x-values")
        with gr.Row():
            y_axis = gr.Dropdown([("(none)", "")] + axes, value="", label="Down", elem_id="y-axis")
            y_values = gr.Textbox("", label="Values", lines=2, elem_id="y-values")
        button = gr.Button("Draw the grid", elem_id="compare")
    return ComparePanel(x_axis, x_values, y_axis, y_values, button)


def wire(panel: ComparePanel, base: list, show_large: gr.Checkbox, outputs: list, groups: Groups):
    """`base`: the Draw tab's prompt, negative prompt, CFG, temperature, seed and random seed;
    `outputs`: its gallery, status and seed. Returns the event, for Stop to cancel."""
    return panel.button.click(
        draw_grid, [*base, panel.x_axis, panel.x_values, panel.y_axis, panel.y_values, show_large], outputs,
        **groups.draw, **PRIVATE,
    )


# ----- what the events call --------------------------------------------------------------
def compare_grid(prompt, negative_prompt, cfg_scale, temperature, seed, randomize_seed, x_axis, x_values,
                 y_axis=None, y_values=None) -> CompareGrid:
    """A `CompareGrid` from widget values. Refused in one sentence, before any work, when a value
    is out of range or the grid holds more images than one request may."""
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


@user_facing
def draw_grid(prompt, negative_prompt, cfg_scale, temperature, seed, randomize_seed, x_axis, x_values, y_axis,
              y_values, show_large=False):
    """The "Draw the grid" button: the labelled grid first, then each cell's PNG."""
    grid = compare_grid(prompt, negative_prompt, cfg_scale, temperature, seed, randomize_seed, x_axis, x_values,
                        y_axis, y_values)
    yield from gallery_stream(grid, scale=2 if show_large else 1)
