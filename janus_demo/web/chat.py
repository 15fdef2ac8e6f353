"""The chat tab: ask about images; answers stream in, and Stop, Retry and Clear act on them."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import gradio as gr

from ..chat import ChatSettings, normalize_conversation
from ..errors import InputError
from ..images import open_image
from ..validation import MAX_MESSAGE_CHARS, MAX_SEED, check_int, check_number, check_text
from . import gpu_tasks
from .errors import user_facing
from .events import PRIVATE, Groups
from .examples import chat_examples
from .limits import LIMITS, MAX_NEW_TOKENS_RANGE, TEMPERATURE_RANGE


@dataclass
class ChatTab:
    chatbot: gr.Chatbot
    textbox: gr.MultimodalTextbox
    stop: gr.Button
    retry: gr.Button
    clear: gr.Button
    draw_this: gr.Button  # a hand-off to the Draw tab (handoffs.py)
    selection: gr.Textbox  # the page's selected text, filled in by draw_this's js
    settings: list  # temperature, top-p, max new tokens, seed, random seed: `respond`'s arguments


def build() -> ChatTab:
    chatbot = gr.Chatbot(label="Conversation", height=460, buttons=["copy"], elem_id="chatbot",
                         placeholder="Attach one or more images and ask about them.")
    textbox = gr.MultimodalTextbox(
        file_types=["image"], file_count="multiple", sources=["upload"], show_label=False,
        placeholder="Ask about an image… (drop images here)", elem_id="chat-input",
    )
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", size="sm", elem_id="chat-stop")
        retry_btn = gr.Button("Retry", size="sm", elem_id="chat-retry")
        clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
        draw_this = gr.Button("Draw this", size="sm", elem_id="draw-this")  # selection, else last answer
    selection = gr.Textbox(visible=False)
    with gr.Accordion("Settings", open=False, elem_id="chat-settings"):
        temperature = gr.Slider(*TEMPERATURE_RANGE, value=0.1, step=0.05, label="Temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p")
        max_tokens = gr.Slider(*MAX_NEW_TOKENS_RANGE, value=512, step=1, label="Max new tokens",
                               elem_id="chat-max-tokens")
        with gr.Row():  # Gradio shows (and sends) an empty Number as 0: a checkbox says "random"
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="chat-seed")
            randomize = gr.Checkbox(value=True, label="Random seed", elem_id="chat-random-seed")
    gr.Examples(chat_examples(), inputs=[textbox], label="Examples", cache_examples=False)
    return ChatTab(chatbot, textbox, stop, retry_btn, clear, draw_this, selection,
                   [temperature, top_p, max_tokens, seed, randomize])


def wire(tab: ChatTab, groups: Groups) -> None:
    submitted = tab.textbox.submit(add_user_message, [tab.chatbot, tab.textbox], [tab.chatbot, tab.textbox],
                                   **PRIVATE)
    answering = submitted.success(respond, [tab.chatbot, *tab.settings], [tab.chatbot], **groups.gpu, **PRIVATE)
    retrying = gr.on([tab.retry.click, tab.chatbot.retry], retry, [tab.chatbot, *tab.settings], [tab.chatbot],
                     **groups.gpu, **PRIVATE)
    # Unqueued, so that a full queue can never leave the box locked.
    unlock = {"fn": lambda: gr.MultimodalTextbox(interactive=True), "outputs": [tab.textbox], "queue": False,
              **PRIVATE}
    answering.then(**unlock)
    tab.stop.click(cancels=[answering, retrying], **unlock)
    tab.clear.click(lambda: ([], gr.MultimodalTextbox(value=None, interactive=True)), None, [tab.chatbot, tab.textbox],
                    cancels=[answering, retrying], queue=False, **PRIVATE)


# ----- what the events call --------------------------------------------------------------
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


def question_about(image: str, question: str) -> list[dict]:
    """One question about one image file, as the model's messages, checked like a chat's."""
    messages = [{"role": "user", "content": [{"type": "image", "image": open_image(image)},
                                             {"type": "text", "text": question}]}]
    check_conversation(messages)
    return messages


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
