"""The two halves of the model handing work to each other: "Ask about this image" (Draw to
chat), "Draw this" (chat to Draw) and Remix (a picture described into the Draw prompt).
Each hand-off keeps the other tab's state: its settings, the chat so far."""

from __future__ import annotations

import gradio as gr

from ..chat import ChatSettings
from ..errors import InputError
from ..validation import MAX_PROMPT_CHARS
from .chat import ChatTab, answer_stream, question_about
from .draw import DrawTab
from .errors import user_facing
from .events import PRIVATE, Groups

REMIX_QUESTION = ("Describe this picture as a prompt for an image generator: its subject, setting, colours, "
                  "light and style, in one paragraph.")
REMIX_MAX_NEW_TOKENS = 200


def wire(chat: ChatTab, draw: DrawTab, tabs: gr.Tabs, groups: Groups):
    """Returns Remix's describing event, for the Draw tab's Stop to cancel."""
    draw.gallery.select(picked_image, [draw.gallery], [draw.picked], queue=False, **PRIVATE)
    draw.ask.click(ask_about, [draw.picked], [chat.textbox, tabs], queue=False, **PRIVATE)
    chat.draw_this.click(draw_this, [chat.chatbot, chat.selection], [draw.prompt, tabs], queue=False, **PRIVATE,
                         js="(history, _) => [history, window.getSelection().toString()]")
    return draw.describe.click(describe_for_remix, [draw.remix_image], [draw.prompt, draw.status], **groups.gpu,
                               **PRIVATE)


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
    messages = question_about(image, REMIX_QUESTION)
    settings = ChatSettings(temperature=0, top_p=0.95, max_new_tokens=REMIX_MAX_NEW_TOKENS, seed=None)
    description = ""
    yield description, "Describing your picture…"
    for piece in answer_stream(messages, settings):
        description += piece
        yield description[:MAX_PROMPT_CHARS], gr.skip()
    yield gr.skip(), ("Described. Edit the prompt if you like, then **Generate** draws variations of your picture "
                      "from it.")
