"""Reasoning split: reasoning fields first, then <think> tags in the content."""

from __future__ import annotations

from typing import Any

import pytest

from shared.engines.reasoning import split_reasoning


@pytest.mark.parametrize(
    ("content", "message", "expected"),
    [
        ("The answer is 4.", {"reasoning_content": " 2+2=4 "}, ("The answer is 4.", "2+2=4")),
        ("4", {"reasoning": "add them"}, ("4", "add them")),
        ("4", {"reasoning_content": None, "reasoning": "vLLM field"}, ("4", "vLLM field")),
        ("<think>\nadd them\n</think>\n\n4", {}, ("4", "add them")),
        ("add them</think>4", {}, ("4", "add them")),  # R1 distill: opening tag in template
        ("<think>a</think>x<think>b</think>y", {}, ("xy", "a\n\nb")),
        ("<think>cut off mid-thought", {}, ("", "cut off mid-thought")),
        ("<think></think>4", {}, ("4", None)),
        ("just an answer", {}, ("just an answer", None)),
        ("", {}, ("", None)),
        ("<think>inline</think>4", {"reasoning_content": "field"}, ("4", "field")),
        ("<think>inline</think>4", {"reasoning_content": "  "}, ("4", "inline")),
    ],
)
def test_split_reasoning(
    content: str, message: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    assert split_reasoning(content, message) == expected
