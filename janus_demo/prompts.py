"""User text to prompt text, with Janus' control tokens defused.

Typed text such as "<image_placeholder>" or "<|Assistant|>" would otherwise be tokenized as
the control token itself and could add image slots, end the user turn, or forge an answer.
We break every control-token spelling with a zero-width space, so the tokenizer reads it as
ordinary characters and the prompt structure stays what the template wrote.
"""

from __future__ import annotations

import re
from functools import lru_cache

BREAK = "\u200b"  # zero-width space: invisible, and never part of a control token


@lru_cache(maxsize=8)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    spellings = sorted({t for t in tokens if len(t) > 1 and not t.isspace()}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, spellings))) if spellings else None


def control_tokens(tokenizer) -> tuple[str, ...]:
    """Every added token of the tokenizer: BOS/EOS/pad, image tokens, role tags."""
    return tuple(token.content for token in tokenizer.added_tokens_decoder.values())


def neutralize(text: str, tokens: tuple[str, ...]) -> str:
    """`text` with each control-token spelling broken after its first character."""
    pattern = _pattern(tokens)
    if pattern is None:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + BREAK + m.group(0)[1:], text)
