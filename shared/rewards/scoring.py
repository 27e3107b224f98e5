"""Score a batch: format check and easy answers here, symbolic answers in the verifier."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from shared.rewards.pool import Verifier
from shared.rewards.rules import EXTRACTED_CHARS, VERIFIER_ERROR, MathJob, Verdict, judge_fast
from shared.rewards.text import FormatCheck, check_format, clean_answer, extract_answer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreItem:
    """One completion (its text) and the gold answer it is judged against."""

    completion: str
    answer: str = ""


@dataclass(frozen=True)
class Judgement:
    """Everything the rules found about one item, before a reward combines it."""

    format: FormatCheck
    answer: Verdict


@dataclass(frozen=True)
class ScoreResult:
    """The reward of one item and why: `reward` is None when there is no verdict."""

    reward: float | None
    format_ok: bool
    answer_ok: bool | None
    extracted: str
    reason: str


Combine = Callable[[Judgement], float | None]


def hfrrf(j: Judgement) -> float | None:
    """1.0 only when the format and the answer are both right; None without a gold verdict."""
    if j.answer.ok is None:
        return None
    return 1.0 if j.format.ok and j.answer.ok else 0.0


def format_only(j: Judgement) -> float | None:
    """1.0 when the completion is well formed, whatever the answer."""
    return 1.0 if j.format.ok else 0.0


def accuracy(j: Judgement) -> float | None:
    """1.0 when the answer is right, whatever the format; None without a gold verdict."""
    return None if j.answer.ok is None else float(j.answer.ok)


def _reason(j: Judgement, reward: float | None, uses_answer: bool, uses_format: bool) -> str:
    """The first thing that went wrong, in the order a reader would check it."""
    if uses_answer and j.answer.ok is None:
        return j.answer.reason
    if uses_format and not j.format.ok:
        return j.format.reason
    if uses_answer and not j.answer.ok:
        return j.answer.reason
    return "ok" if reward else j.format.reason


class Scorer:
    """Judges batches of items; symbolic comparisons go to the given verifier."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    def judge(self, items: Sequence[ScoreItem], *, need_answer: bool = True) -> list[Judgement]:
        """Format and answer verdicts for every item; Math-Verify jobs run as one batch."""
        formats = [check_format(item.completion) for item in items]
        if not need_answer:
            skipped = Verdict(None, "not_checked")
            return [Judgement(f, skipped) for f in formats]
        submit = getattr(self.verifier, "submit", None)
        fast: list[Verdict | MathJob | Future[Verdict]] = []
        for item, f in zip(items, formats, strict=True):
            pred = f.answer if f.ok and f.answer else extract_answer(item.completion)
            verdict = _judge_alone(item.answer, pred)
            # A pool starts on a symbolic job at once, while the rest of the batch is judged.
            fast.append(submit(verdict) if submit and isinstance(verdict, MathJob) else verdict)
        jobs = [v for v in fast if isinstance(v, MathJob)]
        slow = iter(self.verifier.check_many(jobs) if jobs else [])
        answers = [
            next(slow) if isinstance(v, MathJob) else v.result() if isinstance(v, Future) else v
            for v in fast
        ]
        return [Judgement(f, a) for f, a in zip(formats, answers, strict=True)]

    def score(
        self, combine: Combine, items: Sequence[ScoreItem], *, uses_answer: bool = True
    ) -> list[ScoreResult]:
        """Rewards and details for a batch under one combining rule."""
        results = []
        for item, j in zip(items, self.judge(items, need_answer=uses_answer), strict=True):
            reward = combine(j)
            extracted = j.answer.extracted or _extracted(item, j.format)
            reason = _reason(j, reward, uses_answer, combine is not accuracy)
            answer_ok = j.answer.ok if uses_answer else None
            results.append(ScoreResult(reward, j.format.ok, answer_ok, extracted, reason))
        return results


def _judge_alone(gold: str, pred: str) -> Verdict | MathJob:
    """The fast rule on one item; a bug it meets on odd input costs that item its verdict
    (none, with the reason), never the batch's."""
    try:
        return judge_fast(gold, pred)
    except Exception:
        log.exception("the answer rule failed on one item; it gets no verdict")
        return Verdict(None, VERIFIER_ERROR, pred[:EXTRACTED_CHARS])


def _extracted(item: ScoreItem, fmt: FormatCheck) -> str:
    """What the answer block says, for details when the answer was not judged."""
    raw = fmt.answer if fmt.answer is not None else extract_answer(item.completion)
    return clean_answer(raw[: EXTRACTED_CHARS * 4])[:EXTRACTED_CHARS]
