"""Score a batch: format check and easy answers here, symbolic answers in the verifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.rewards.pool import Verifier
from shared.rewards.rules import EXTRACTED_CHARS, MathJob, Verdict, judge_fast
from shared.rewards.text import FormatCheck, check_format, clean_answer, extract_answer


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
        fast = [
            judge_fast(
                item.answer, f.answer if f.ok and f.answer else extract_answer(item.completion)
            )
            for item, f in zip(items, formats, strict=True)
        ]
        jobs = [v for v in fast if isinstance(v, MathJob)]
        slow = iter(self.verifier.check_many(jobs) if jobs else [])
        answers = [next(slow) if isinstance(v, MathJob) else v for v in fast]
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


def _extracted(item: ScoreItem, fmt: FormatCheck) -> str:
    """What the answer block says, for details when the answer was not judged."""
    raw = fmt.answer if fmt.answer is not None else extract_answer(item.completion)
    return clean_answer(raw[: EXTRACTED_CHARS * 4])[:EXTRACTED_CHARS]
