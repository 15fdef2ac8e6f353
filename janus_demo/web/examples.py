"""Our own examples (examples/examples.json): questions with images, and prompts to draw."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def chat_examples() -> list[list[dict]]:
    return [[{"text": e["text"], "files": [str(EXAMPLES / f) for f in e["files"]]}] for e in _examples()["chat"]]


def prompt_examples() -> list[list[str]]:
    return [[prompt] for prompt in _examples()["prompts"]]


def _examples() -> dict:
    return json.loads((EXAMPLES / "examples.json").read_text())
