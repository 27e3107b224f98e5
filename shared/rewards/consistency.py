"""Think/answer consistency: does the reasoning's own conclusion match the stated answer?

The hard reward never reads ``<think>``; a policy can learn to reason toward one value and
answer another. This check finds the last conclusion the reasoning states (a ``\\boxed{}``,
"the answer is X", "therefore … is X", or a closing "… is X.") and judges it against the
``<answer>`` text with the same answer rule, the answer playing the gold.
"""

from __future__ import annotations

import re

from shared.rewards.pool import InlineVerifier, Verifier
from shared.rewards.rules import MathJob, Verdict, judge_fast
from shared.rewards.text import (
    ANSWER_CLOSE,
    clean_answer,
    completion_text,
    extract_answer,
    last_boxed,
    think_body,
)

_END = r"(?=\.\s|\.$|\n|$)"
_STATED = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=|would\s+be|should\s+be|must\s+be)"
    rf"\s*([^\n]{{1,200}}?){_END}",
    re.IGNORECASE,
)
_THEREFORE = re.compile(
    r"\b(?:therefore|thus|so|hence)\b[,:]?\s+(?:[\w\\{}^]+\s+){0,4}?(?:is|are|equals|=)\s+"
    rf"([^\n]{{1,120}}?){_END}",
    re.IGNORECASE,
)
_CLOSING = re.compile(r"\b(?:is|are|equals|=)\s+([^\s.,;!?\n]{1,60})[\s.!]*$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\n]\s")


def stated_conclusion(think: str) -> str | None:
    """The last conclusion a chain of thought states, or None when it states none."""
    candidates: list[tuple[int, str]] = []
    for pattern in (_STATED, _THEREFORE):
        found = list(pattern.finditer(think))
        if found:
            candidates.append((found[-1].start(), found[-1].group(1)))
    boxed_at = think.rfind("\\boxed{")
    boxed = last_boxed(think) if boxed_at >= 0 else None
    if boxed is not None:
        candidates.append((boxed_at, boxed))
    if candidates:
        return max(candidates)[1].strip()
    return _closing_statement(think)


def _closing_statement(think: str) -> str | None:
    """`… is X.` at the very end of the reasoning."""
    tail = think.rstrip()
    starts = [m.end() for m in _SENTENCE_END.finditer(tail)]
    last_sentence = tail[starts[-1] :] if starts else tail
    m = _CLOSING.search(last_sentence)
    return m.group(1) if m else None


def consistency(completion: object, *, verifier: Verifier | None = None) -> bool | None:
    """True/False when the reasoning's conclusion does/doesn't match the answer; else None."""
    text = completion_text(completion)
    think = think_body(text)
    if think is None or ANSWER_CLOSE not in text.lower():
        return None
    conclusion = stated_conclusion(think)
    answer = clean_answer(extract_answer(text))
    if conclusion is None or not answer:
        return None
    verdict = judge_fast(answer, conclusion)
    if isinstance(verdict, MathJob):
        verdict = _run(verdict, verifier or InlineVerifier())
    return verdict.ok


def _run(job: MathJob, verifier: Verifier) -> Verdict:
    """One Math-Verify job through the given verifier."""
    return verifier.check_many([job])[0]
