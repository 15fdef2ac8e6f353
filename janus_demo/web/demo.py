"""The whole app: the two tabs side by side, the hand-offs between them, and the API."""

from __future__ import annotations

import gradio as gr

from . import api, chat, compare, draw, handoffs
from .events import PRIVATE, groups
from .limits import set_limits


def build_demo(
    *, model_name: str, max_images: int = 16, concurrency: int = 1, batch_users: int = 1,
    time_limit_s: float = 900.0,
) -> gr.Blocks:
    """The Blocks; the model must be reachable through `gpu_tasks.install` before serving.
    `concurrency` and `batch_users`: see `events.groups`."""
    set_limits(max_images=max_images, time_limit_s=time_limit_s)
    shared = groups(concurrency, batch_users)
    with gr.Blocks(title="Janus-Pro demo", delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(f"# Janus-Pro\nOne model that understands images and draws them · model: `{model_name}`",
                    elem_id="header")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat about images", id="chat", elem_id="chat-tab"):
                chat_tab = chat.build()
            with gr.Tab("Draw", id="draw", elem_id="draw-tab"):
                draw_tab = draw.build(max_images)
        api.add_endpoints(shared)

        chat.wire(chat_tab, shared)
        drawing = draw.wire(draw_tab, shared)
        comparing = compare.wire(draw_tab.compare, draw_tab.base, draw_tab.show_large, draw_tab.outputs, shared)
        describing = handoffs.wire(chat_tab, draw_tab, tabs, shared)
        running = [*drawing, comparing, describing]
        draw_tab.stop.click(draw.stopped, [draw_tab.status], [draw_tab.status], cancels=running, queue=False,
                            **PRIVATE)
        # Again once each event is over (`.then` follows a cancelled event too): a progress update
        # sent just before the Stop reached the server may arrive after Stop's "Stopped".
        for event in running:
            event.then(draw.stopped, [draw_tab.status], [draw_tab.status], queue=False, **PRIVATE)
    return demo
