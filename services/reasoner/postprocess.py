"""Post-processing of reasoner outputs: wording and reject rules.

The reasoning model read a *description* of the image; the sample it becomes will be
trained with the *image*.  So wording that only makes sense for a text ("the description
says", "as described") is rewritten into image wording, with the verb handled so the
sentence stays grammatical ("The description illustrates" → "The image illustrates",
never "The image shows illustrates").  Samples that cannot be trusted are rejected,
each with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_DESC = r"(?:the|this)\s+(?:detailed\s+|given\s+|provided\s+|image\s+|above\s+)?description"
_SAYING = (
    r"(?:says|said|mentions|mentioned|states|stated|notes|noted|indicates|indicated|reads"
    r"|tells\s+us|specifies|specified|explains|confirms|reports|clarifies)"
)
_SHOWING = r"(?:shows|showed|depicts|illustrates|presents|lists|includes|contains|has|highlights)"
REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), replacement)
    for pattern, replacement in (
        # "the description says (that)" → "the image shows (that)": the verb is replaced.
        (rf"\b{_DESC}\s+{_SAYING}\b", "the image shows"),
        # "the description describes" → "the image shows".
        (rf"\b{_DESC}\s+describes\b", "the image shows"),
        # "the description illustrates" → "the image illustrates": the verb stays.
        (rf"\b{_DESC}(?=\s+{_SHOWING}\b)", "the image"),
        (
            r"\bas\s+(?:described|mentioned|stated|noted)(?:\s+(?:in\s+" + _DESC + r"|above))?",
            "as shown",
        ),
        (rf"\b(according\s+to|based\s+on|from|in|per|by)\s+{_DESC}", r"\1 the image"),
        (rf"\b{_DESC}\b", "the image"),
        (r"\bdescribed\b", "shown"),
    )
)

_LEAKS = tuple(
    re.compile(pattern, re.I)
    for pattern in (
        r"\banswer\s+(?:is|was|has\s+been)\s+(?:already\s+)?(?:given|provided|stated|supplied|said\s+to\s+be)\b",
        r"\b(?:given|provided|supplied|expected|gold|reference)\s+answer\b",
        r"\bground[\s-]*truth\b",
        r"\b(?:we\s+are|we're|i\s+am|i'm)\s+told\s+(?:that\s+)?the\s+answer\b",
        r"\bthe\s+(?:problem|question|prompt|task)\s+(?:says|states|tells\s+us)\s+(?:that\s+)?the\s+answer\b",
        r"\bcorrect\s+answer\s+(?:is\s+)?(?:given|provided|stated)\b",
    )
)


def _match_case(source: str, replacement: str) -> str:
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def rewrite_wording(text: str) -> str:
    """Description-wording → image-wording, keeping sentences grammatical."""
    for pattern, replacement in REWRITES:
        text = pattern.sub(_replacer(replacement), text)
    return text


def _replacer(replacement: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return _match_case(match.group(0), match.expand(replacement))

    return replace


def leaks_answer(text: str) -> bool:
    """Whether the CoT still refers to the gold answer as something it was given."""
    return any(pattern.search(text) for pattern in _LEAKS)


@dataclass(frozen=True)
class Candidate:
    """What the reasoner produced for one item, before the rules."""

    cot: str
    final_answer: str
    finish_reason: str


def precheck(candidate: Candidate, *, max_cot_chars: int, reject_leaks: bool) -> str | None:
    """The first reject reason that needs no verifier, or None."""
    if candidate.finish_reason == "length":
        return "truncated"
    if not candidate.cot.strip():
        return "empty_cot"
    if len(candidate.cot) > max_cot_chars:
        return "too_long"
    if not candidate.final_answer.strip():
        return "no_final_answer"
    if reject_leaks and leaks_answer(candidate.cot):
        return "answer_leak"
    return None
