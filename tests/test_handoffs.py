"""The hand-offs between the tabs, as functions (the browser tests drive them through the page)."""

from __future__ import annotations

import gradio as gr
import pytest

from janus_demo.validation import MAX_PROMPT_CHARS
from janus_demo.web import handoffs

HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red fox in the snow."}]},
    {"role": "user", "content": "And the sky?"},
    {"role": "assistant", "content": "  Grey, with low clouds.  "},
]


def test_draw_this_takes_the_selection_else_the_last_answer():
    assert handoffs.draw_this(HISTORY, "  red fox ")[0] == "red fox"
    prompt, tabs = handoffs.draw_this(HISTORY, "")
    assert prompt == "Grey, with low clouds." and tabs.selected == "draw"
    assert handoffs.draw_this(HISTORY[:2], None)[0] == "A red fox in the snow."  # typed blocks, as sent back


def test_draw_this_cuts_a_long_answer_to_the_prompt_limit():
    long = [{"role": "assistant", "content": "fox " * 1000}]
    assert len(handoffs.draw_this(long, "")[0]) == MAX_PROMPT_CHARS


def test_draw_this_without_an_answer_says_what_to_do():
    with pytest.raises(gr.Error, match="There is no answer to draw yet"):
        handoffs.draw_this(HISTORY[:1], "   ")


def test_ask_about_attaches_the_picked_image_and_opens_the_chat():
    box, tabs = handoffs.ask_about("/tmp/janus_demo/run-x/cell1_5_0.png")
    assert box.value["text"] == "" and [f["path"] for f in box.value["files"]] == ["/tmp/janus_demo/run-x/cell1_5_0.png"]
    assert tabs.selected == "chat"
    with pytest.raises(gr.Error, match="Click one of the images first"):
        handoffs.ask_about(None)


def test_picking_a_gallery_item_remembers_its_file():
    gallery = [("/tmp/a.png", "2 by 2 grid"), ("/tmp/b.png", "CFG scale 1")]
    event = gr.SelectData(None, {"index": 1, "value": {"image": {"path": "/tmp/b.png"}}})
    assert handoffs.picked_image(gallery, event) == "/tmp/b.png"
    assert handoffs.picked_image([], event) is None  # the gallery was cleared since


def test_remix_needs_a_picture():
    with pytest.raises(gr.Error, match="Upload a picture to remix first"):
        list(handoffs.describe_for_remix(None))


def test_the_status_after_stop_names_where_the_run_stopped_and_leaves_other_lines_alone():
    """Stop writes it, and each drawing's `.then` writes it again once the event is over, since a
    progress update may reach the page after Stop's: the second write must not undo a finished
    run's line."""
    from janus_demo.web.draw import stopped

    assert stopped("Step 12 / 576 · 3 s elapsed · about 140 s left") == "Stopped; the last step shown was 12 / 576."
    assert stopped("Starting… seed 7") == stopped("Describing your picture…") == "Stopped."
    for line in ("Done: 4 images in 9.0 s · seed 7", "Stopped; the last step shown was 12 / 576.", "", None,
                 "Settings of image #2 of 4 (seed 7) restored."):
        assert isinstance(stopped(line), type(gr.skip())), line
