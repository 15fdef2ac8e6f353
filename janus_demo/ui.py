"""The Gradio app: components and the wiring between them and `handlers`. No logic lives here."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from . import handlers
from .validation import MAX_SEED

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GPU = "gpu"  # every event that runs the model shares this concurrency group
PRIVATE = {"api_visibility": "private"}


def chat_examples() -> list[list[dict]]:
    return [[{"text": e["text"], "files": [str(EXAMPLES / f) for f in e["files"]]}] for e in _examples()["chat"]]


def prompt_examples() -> list[list[str]]:
    return [[prompt] for prompt in _examples()["prompts"]]


def _examples() -> dict:
    return json.loads((EXAMPLES / "examples.json").read_text())


def build_demo(
    *, model_name: str, max_images: int = 16, concurrency: int = 1, batch_users: int = 1,
    time_limit_s: float = 900.0,
) -> gr.Blocks:
    """The whole app; `handlers` must reach a loaded engine through `gpu_tasks.install`.

    Chat answers run `concurrency` at a time. Image requests too, unless `batch_users` > 1:
    then that many may be in flight, and the engine's shared decoder runs them in one loop."""
    handlers.LIMITS = handlers.Limits(max_images=max_images, time_limit_s=time_limit_s)
    gpu = {"concurrency_id": GPU, "concurrency_limit": concurrency}
    draw_group = {"concurrency_id": "draw", "concurrency_limit": batch_users} if batch_users > 1 else gpu
    with gr.Blocks(title="Janus-Pro demo", delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(
            f"# Janus-Pro\nOne model that understands images and draws them · model: `{model_name}`",
            elem_id="header",
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Chat about images", id="chat", elem_id="chat-tab"):
                chatbot = gr.Chatbot(label="Conversation", height=460, buttons=["copy"], elem_id="chatbot",
                                     placeholder="Attach one or more images and ask about them.")
                textbox = gr.MultimodalTextbox(
                    file_types=["image"], file_count="multiple", sources=["upload"], show_label=False,
                    placeholder="Ask about an image… (drop images here)", elem_id="chat-input",
                )
                with gr.Row():
                    chat_stop = gr.Button("Stop", variant="stop", size="sm", elem_id="chat-stop")
                    chat_retry = gr.Button("Retry", size="sm", elem_id="chat-retry")
                    chat_clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
                    draw_this = gr.Button("Draw this", size="sm", elem_id="draw-this")  # selection, else last answer
                selection = gr.Textbox(visible=False)  # the page's selected text, filled in by draw_this's js
                with gr.Accordion("Settings", open=False, elem_id="chat-settings"):
                    chat_temperature = gr.Slider(*handlers.TEMPERATURE_RANGE, value=0.1, step=0.05,
                                                 label="Temperature (0 = greedy)")
                    chat_top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p")
                    chat_max_tokens = gr.Slider(*handlers.MAX_NEW_TOKENS_RANGE, value=512, step=1,
                                                label="Max new tokens", elem_id="chat-max-tokens")
                    with gr.Row():  # Gradio shows (and sends) an empty Number as 0: a checkbox says "random"
                        chat_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                              elem_id="chat-seed")
                        chat_randomize = gr.Checkbox(value=True, label="Random seed", elem_id="chat-random-seed")
                gr.Examples(chat_examples(), inputs=[textbox], label="Examples", cache_examples=False)

            with gr.Tab("Draw", id="draw", elem_id="draw-tab"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                            placeholder="A watercolor fox in the snow, soft morning light")
                        with gr.Row():
                            draw_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                            draw_stop = gr.Button("Stop", variant="stop", elem_id="draw-stop")
                        num_images = gr.Slider(1, max_images, value=min(4, max_images), step=1,
                                               label="Parallel samples", elem_id="num-images")
                        cfg_scale = gr.Slider(*handlers.CFG_RANGE, value=5, step=0.5,
                                              label="CFG scale (1 = off, twice as fast)", elem_id="cfg-scale")
                        temperature = gr.Slider(*handlers.TEMPERATURE_RANGE, value=1, step=0.05,
                                                label="Temperature (0 = greedy)", elem_id="temperature")
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                             elem_id="seed")
                            randomize = gr.Checkbox(value=True, label="Random seed", elem_id="random-seed")
                        show_large = gr.Checkbox(value=False, elem_id="show-768",
                                                 label="Show at 768 px (the 384 px images enlarged ×2, LANCZOS)")
                        with gr.Accordion("Advanced", open=False, elem_id="draw-advanced"):
                            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative",
                                                  placeholder="What the images should avoid (replaces the empty prompt CFG compares with)")
                        with gr.Accordion("Compare grid", open=False, elem_id="compare-panel"):
                            gr.Markdown("The settings above, varied along one or two axes: one image per cell, "
                                        "all drawn in one loop. Numbers: separated by commas; prompts: one per line.")
                            axes = [(label, name) for name, label in handlers.AXES.items()]
                            with gr.Row():
                                x_axis = gr.Dropdown(axes, value="cfg_scale", label="Across", elem_id="x-axis")
                                x_values = gr.Textbox("3, 5, 7", label="Values", lines=2, elem_id="x-values")
                            with gr.Row():
                                y_axis = gr.Dropdown([("(none)", "")] + axes, value="", label="Down",
                                                     elem_id="y-axis")
                                y_values = gr.Textbox("", label="Values", lines=2, elem_id="y-values")
                            compare_btn = gr.Button("Draw the grid", elem_id="compare")
                        with gr.Accordion("Remix a picture", open=False, elem_id="remix-panel"):
                            gr.Markdown("Upload a picture: the model describes it into the prompt above; edit "
                                        "the description, then Generate draws variations of your picture.")
                            remix_image = gr.Image(type="filepath", sources=["upload"], label="Your picture",
                                                   height=200, elem_id="remix-image")
                            describe_btn = gr.Button("Describe it", elem_id="describe")
                        redraw_file = gr.File(label="Drop one of our PNGs here: its settings come back",
                                              file_types=["image"], height=120, elem_id="redraw-file")
                        redraw_btn = gr.Button("Redraw alone", visible=False, elem_id="redraw")
                        gr.Examples(prompt_examples(), inputs=[prompt], label="Example prompts", cache_examples=False)
                    with gr.Column(scale=3):
                        status = gr.Markdown(elem_id="status")
                        gallery = gr.Gallery(label="Images", columns=4, height=560, format="png", elem_id="gallery",
                                             object_fit="contain", buttons=["download", "fullscreen"],
                                             interactive=False, type="filepath")  # contain: a grid is not square
                        picked = gr.State(None)  # the gallery item last clicked
                        ask_btn = gr.Button("Ask about this image", size="sm", elem_id="ask-about")

        # API-only endpoints: clients call these by name; they have no widgets of their own.
        # Inputs are plain numbers (no precision): Gradio's own int() would turn "abc" or NaN into
        # a hidden error, while `handlers` refuses them, and 4.5 images, in words. An input's
        # value is the parameter's default for clients.
        with gr.Column(visible=False):
            api_generate_btn, api_understand_btn = gr.Button(), gr.Button()
            api_generate_in = [gr.Textbox(label="prompt"), gr.Number(label="num_images"),
                               gr.Number(label="cfg_scale"), gr.Number(label="temperature"), gr.Number(label="seed"),
                               gr.Textbox(label="negative_prompt")]
            api_generate_out = [gr.Gallery(label="images", format="png"), gr.Number(label="seed", precision=0)]
            api_understand_in = [gr.File(label="image"), gr.Textbox(label="question"), gr.Number(label="temperature"),
                                 gr.Number(label="top_p"), gr.Number(label="max_new_tokens"), gr.Number(label="seed")]
            api_understand_out = gr.Textbox(label="answer")
            api_compare_btn = gr.Button()
            api_compare_in = [gr.Textbox(label="prompt"), gr.Textbox(label="x_axis"), gr.Textbox(label="x_values"),
                              gr.Textbox(label="y_axis"), gr.Textbox(label="y_values"), gr.Number(5.0, label="cfg_scale"),
                              gr.Number(1.0, label="temperature"), gr.Number(label="seed"),
                              gr.Textbox(label="negative_prompt")]
            # The official Space's two calls (see handlers): its names, order and defaults.
            official_generate_btn, official_understand_btn = gr.Button(), gr.Button()
            official_generate_in = [gr.Textbox(label="prompt"), gr.Number(1234, label="seed"),
                                    gr.Number(5, label="guidance"), gr.Number(1.0, label="t2i_temperature")]
            official_understand_in = [gr.File(label="image"), gr.Textbox(label="question"), gr.Number(42, label="seed"),
                                      gr.Number(0.95, label="top_p"), gr.Number(0.1, label="temperature")]

        # ----- chat wiring -----
        settings = [chat_temperature, chat_top_p, chat_max_tokens, chat_seed, chat_randomize]
        submitted = textbox.submit(handlers.add_user_message, [chatbot, textbox], [chatbot, textbox], **PRIVATE)
        answering = submitted.success(handlers.respond, [chatbot, *settings], [chatbot], **gpu, **PRIVATE)
        retrying = gr.on([chat_retry.click, chatbot.retry], handlers.retry, [chatbot, *settings], [chatbot],
                         **gpu, **PRIVATE)
        # Unqueued, so that a full queue can never leave the box locked.
        unlock = {"fn": lambda: gr.MultimodalTextbox(interactive=True), "outputs": [textbox], "queue": False, **PRIVATE}
        answering.then(**unlock)
        chat_stop.click(cancels=[answering, retrying], **unlock)
        chat_clear.click(lambda: ([], gr.MultimodalTextbox(value=None, interactive=True)), None, [chatbot, textbox],
                         cancels=[answering, retrying], queue=False, **PRIVATE)

        # ----- draw wiring -----
        drawing = gr.on(
            [draw_btn.click, prompt.submit], handlers.draw,
            [prompt, negative, num_images, cfg_scale, temperature, seed, randomize, show_large],
            [gallery, status, seed], **draw_group, **PRIVATE,
        )
        redraw_file.upload(handlers.restore_settings, [redraw_file],
                           [prompt, negative, num_images, cfg_scale, temperature, seed, randomize, show_large,
                            redraw_btn, status], **PRIVATE)
        redraw_file.clear(lambda: gr.Button(visible=False), None, [redraw_btn], queue=False, **PRIVATE)
        redrawing = redraw_btn.click(handlers.redraw_alone, [redraw_file, show_large], [gallery, status],
                                     **draw_group, **PRIVATE)
        comparing = compare_btn.click(
            handlers.draw_grid,
            [prompt, negative, cfg_scale, temperature, seed, randomize, x_axis, x_values, y_axis, y_values, show_large],
            [gallery, status, seed], **draw_group, **PRIVATE,
        )

        # ----- hand-offs between the tabs (each keeps the other tab's state) -----
        gallery.select(handlers.picked_image, [gallery], [picked], queue=False, **PRIVATE)
        ask_btn.click(handlers.ask_about, [picked], [textbox, tabs], queue=False, **PRIVATE)
        draw_this.click(handlers.draw_this, [chatbot, selection], [prompt, tabs], queue=False, **PRIVATE,
                        js="(history, _) => [history, window.getSelection().toString()]")
        describing = describe_btn.click(handlers.describe_for_remix, [remix_image], [prompt, status], **gpu,
                                        **PRIVATE)
        draw_stop.click(handlers.stopped, [status], [status], cancels=[drawing, redrawing, comparing, describing],
                        queue=False, **PRIVATE)

        # ----- public API -----
        api_generate_btn.click(handlers.api_generate, api_generate_in, api_generate_out, api_name="generate",
                               **draw_group)
        api_compare_btn.click(handlers.api_compare, api_compare_in, api_generate_out, api_name="compare",
                              **draw_group)
        api_understand_btn.click(handlers.api_understand, api_understand_in, api_understand_out,
                                 api_name="understand", **gpu)
        official_generate_btn.click(handlers.generate_image, official_generate_in, api_generate_out[0],
                                    api_name="generate_image", **draw_group)
        official_understand_btn.click(handlers.multimodal_understanding, official_understand_in, api_understand_out,
                                      api_name="multimodal_understanding", **gpu)
    return demo
