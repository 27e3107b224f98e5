"""Text helpers shared by the rules: completion text, format check, answer extraction, cleaning.

Everything here is linear in the input length (no backtracking regex over the whole
completion), so a 1 MB completion costs milliseconds, not minutes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_ANY_TAG = re.compile(r"<\s*/?\s*(?:think|answer)\s*>", re.IGNORECASE)

FORMAT_OK = "ok"
FORMAT_NO_THINK = "format:no_think"
FORMAT_UPPERCASE = "format:uppercase_tag"
FORMAT_TRUNCATED = "format:truncated"
FORMAT_NESTED = "format:nested_tag"
FORMAT_TEXT_OUTSIDE = "format:text_outside"
FORMAT_NO_ANSWER = "format:no_answer"
FORMAT_EMPTY_ANSWER = "format:empty_answer"

# `Final Answer:`, `Final answer is`, `The answer is`, `The correct answer is:`, `Answer:`,
# `Answer is` — the prefix is never part of the answer.
_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:final\s+|correct\s+)?answer\b(?:\s+is\b)?\s*[:：]?\s*",
    re.IGNORECASE,
)
_FINAL = re.compile(r"final\s+answer(?:\s*[:：]|\s+is\b\s*[:：]?)\s*(.+)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE)
_MARKDOWN = re.compile(r"^[*_`#>\s]+|[*_`\s]+$")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_NEEDS_CLEANING = re.compile(r"[<$\\.]|answer", re.IGNORECASE)


@dataclass(frozen=True)
class FormatCheck:
    """Whether a completion is well formed, why not, and the body of its answer block."""

    ok: bool
    reason: str
    answer: str | None = None


def completion_text(completion: object) -> str:
    """The text of a completion given as a string or as a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        chosen = assistant or messages
        return _content_text(chosen[-1].get("content", "")) if chosen else ""
    return ""


def _content_text(content: object) -> str:
    """A message content that is either a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def check_format(text: str) -> FormatCheck:
    """Exactly one <think>…</think> then one <answer>…</answer>, nothing else, no nesting."""
    s = text.strip()
    if not s.startswith(THINK_OPEN):
        if s[: len(THINK_OPEN)].lower() == THINK_OPEN:
            return FormatCheck(False, FORMAT_UPPERCASE)
        return FormatCheck(False, FORMAT_TEXT_OUTSIDE if THINK_OPEN in s else FORMAT_NO_THINK)
    close = s.find(THINK_CLOSE)
    if close < 0:
        upper = THINK_CLOSE in s.lower()
        return FormatCheck(False, FORMAT_UPPERCASE if upper else FORMAT_TRUNCATED)
    if _ANY_TAG.search(s, len(THINK_OPEN), close):
        return FormatCheck(False, FORMAT_NESTED)
    return _check_answer_block(s[close + len(THINK_CLOSE) :].lstrip())


def _check_answer_block(rest: str) -> FormatCheck:
    """The part after </think>: one lower-case answer block, non-blank, nothing after it."""
    if not rest:
        return FormatCheck(False, FORMAT_NO_ANSWER)
    if not rest.startswith(ANSWER_OPEN):
        if rest[: len(ANSWER_OPEN)].lower() == ANSWER_OPEN:
            return FormatCheck(False, FORMAT_UPPERCASE)
        return FormatCheck(False, FORMAT_TEXT_OUTSIDE)
    if not rest.endswith(ANSWER_CLOSE):
        if ANSWER_CLOSE in rest:
            return FormatCheck(False, FORMAT_TEXT_OUTSIDE)
        upper = ANSWER_CLOSE in rest.lower()
        return FormatCheck(False, FORMAT_UPPERCASE if upper else FORMAT_TRUNCATED)
    body = rest[len(ANSWER_OPEN) : len(rest) - len(ANSWER_CLOSE)]
    if _ANY_TAG.search(body):
        return FormatCheck(False, FORMAT_NESTED)
    if not body.strip():
        return FormatCheck(False, FORMAT_EMPTY_ANSWER)
    return FormatCheck(True, FORMAT_OK, body)


def extract_answer(text: str) -> str:
    """The answer a completion gives: its last answer block, else what follows </think>."""
    lowered = text.lower()
    end = lowered.rfind(ANSWER_CLOSE)
    if end >= 0:
        start = lowered.rfind(ANSWER_OPEN, 0, end)
        if start >= 0:
            return text[start + len(ANSWER_OPEN) : end]
    think_end = lowered.rfind(THINK_CLOSE)
    tail = text[think_end + len(THINK_CLOSE) :] if think_end >= 0 else text
    head = tail.lstrip()
    if head[: len(ANSWER_OPEN)].lower() == ANSWER_OPEN:
        return head[len(ANSWER_OPEN) :]
    return tail


def answer_block(text: str) -> str | None:
    """The body of the last ``<answer>`` block (closed, or cut off at the end); None if none."""
    lowered = text.lower()
    start = lowered.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    end = lowered.find(ANSWER_CLOSE, start)
    return text[start + len(ANSWER_OPEN) : end if end >= 0 else len(text)]


def extract_final_answer(text: str, *, require_answer_block: bool = False) -> str:
    """The final answer a model states, as one clean line.

    Looked for in order: the last ``<answer>`` block, then in it (or in the whole text)
    the last ``Final Answer:``, then the last ``\\boxed{}``; for text without either
    marker, ``the answer is …``, else the last line.  With ``require_answer_block``, text
    without an ``<answer>`` block states no answer (the evaluation rule of the paper).
    """
    block = answer_block(text)
    if block is None and require_answer_block:
        return ""
    body = (text if block is None else block).strip()
    finals = _FINAL.findall(body)
    if finals:
        body = finals[-1]
    boxed = last_boxed(body)
    if boxed is not None:
        return boxed.strip()
    if not finals and block is None:
        stated = _ANSWER_IS.findall(body)
        if stated:
            return _one_line(stated[-1])
        lines = [line for line in body.splitlines() if line.strip()]
        body = lines[-1] if lines else ""
    return _one_line(body)


def _one_line(answer: str) -> str:
    """The first line, without markdown emphasis or a closing period."""
    answer = answer.strip().splitlines()[0] if answer.strip() else ""
    answer = _MARKDOWN.sub("", answer).strip()
    return answer.rstrip(".").strip()


def think_body(text: str) -> str | None:
    """The text inside the first <think>…</think>, or None when there is no closed block."""
    lowered = text.lower()
    start = lowered.find(THINK_OPEN)
    end = lowered.find(THINK_CLOSE, start + 1) if start >= 0 else -1
    return text[start + len(THINK_OPEN) : end] if end >= 0 else None


def last_boxed(s: str) -> str | None:
    """The content of the last \\boxed{…} (or \\fbox{…}) in ``s``, braces balanced."""
    start = max(s.rfind(opener) for opener in _BOX_OPENERS)
    if start < 0:
        return None
    begin = s.index("{", start) + 1
    depth = 1
    for i in range(begin, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return s[begin:i]
    return s[begin:]


def _strip_delimiters(s: str) -> str:
    """Remove one pair of math delimiters wrapping the whole string."""
    for left, right in _DELIMITERS:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def clean_answer(text: str) -> str:
    """Strip `Final Answer:`, the last \\boxed{}, surrounding $…$ and a trailing period."""
    s = text.strip()
    if not _NEEDS_CLEANING.search(s):
        return s
    for _ in range(6):
        before = s
        s = _ANY_TAG.sub("", s).strip()
        s = _PREFIX.sub("", s, count=1)
        boxed = last_boxed(s)
        s = boxed.strip() if boxed is not None else s
        s = _strip_delimiters(s.strip())
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        if s == before:
            break
    return s
