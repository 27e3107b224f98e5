"""Separate a model's chain of thought from its final content.

Three conventions exist: DeepSeek's API puts the CoT in
``message.reasoning_content``; vLLM's reasoning parser uses ``message.reasoning`` (newer)
or ``reasoning_content`` (older); raw models write ``<think>…</think>`` in the content, and
R1 distills often omit the opening tag because the chat template already emitted it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

OPEN, CLOSE = "<think>", "</think>"
_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
REASONING_FIELDS = ("reasoning_content", "reasoning")


def split_think_tags(content: str) -> tuple[str, str | None]:
    """Split ``<think>`` blocks out of ``content``: (text without them, reasoning or None)."""
    parts: list[str] = [m.group(1) for m in _BLOCK.finditer(content)]
    text = _BLOCK.sub("", content)
    if CLOSE in text:  # closing tag without an opening one: all before it is reasoning
        head, _, text = text.rpartition(CLOSE)
        parts.insert(0, head.replace(OPEN, ""))
    if OPEN in text:  # opened but never closed (cut off): the rest is unfinished reasoning
        text, _, tail = text.partition(OPEN)
        parts.append(tail)
    reasoning = "\n\n".join(p.strip() for p in parts if p.strip())
    return text.strip(), reasoning or None


def split_reasoning(content: str, message: Mapping[str, Any]) -> tuple[str, str | None]:
    """(final text, reasoning or None) from a chat message's content and reasoning fields."""
    text, inline = split_think_tags(content or "")
    for field in REASONING_FIELDS:
        value = message.get(field)
        if isinstance(value, str) and value.strip():
            return text, value.strip()
    return text, inline
