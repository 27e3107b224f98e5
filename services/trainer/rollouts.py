"""What a GRPO step's completions looked like: recorded by a zero-weight reward function.

TRL hands every reward function the completions, their token ids and the dataset columns
of the step. ``RolloutRecorder`` sits in the reward list with weight 0, so it sees exactly
what the policy produced without changing the reward, and keeps the step's per-completion
facts until a trainer callback picks them up with the loss and KL of the same step.

With several training processes each sees only its own share of the completions; the
facts are gathered from every process before the step's figures are computed, so the
figures are over all completions (every process must take part: the callback runs in
each at the same step).

The recorder also keeps a few completions per step for people to read (``Sample``): the
first completion of each of the step's first prompts, in the order TRL generated them, with
the reward the trainer paid for it (read from the reward functions, wrapped in ``Paid``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.rewards import ScoreItem, Scorer, ScoreResult, completion_text, consistency, score

Gather = Callable[[list[Any]], list[Any]]
RewardFn = Callable[..., list[float | None]]  # TRL's form: None means "no verdict"


@dataclass(frozen=True)
class Sample:
    """One completion kept for people to read, with how it was scored."""

    group: str  # which prompt it answers (its item, else its text): one sample per prompt
    item_id: str | None
    prompt: str
    completion: str
    answer: str
    reward: float | None
    correct: bool | None
    well_formed: bool
    reason: str
    length: int


class Paid:
    """A reward function that keeps the rewards of its last batch (what the trainer paid),
    for the recorder, which TRL calls after it on the same completions."""

    def __init__(self, fn: RewardFn) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "reward")  # TRL names reward columns by it
        self.last: list[float | None] = []

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        self.last = list(self.fn(*args, **kwargs))
        return self.last


def paid_total(paid: Sequence[Paid], i: int) -> float | None:
    """Completion ``i``'s reward as TRL adds it up (weights 1, no-verdict entries left out;
    None when no function gave a verdict)."""
    values = [p.last[i] for p in paid if i < len(p.last)]
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) if finite else None


def first_of_each_prompt(parts: Sequence[Sequence[Sample]], limit: int) -> list[Sample]:
    """The first completion of each prompt, in order, at most ``limit``; ``parts`` are the
    candidates of consecutive shares (batches, processes), each already one per prompt run,
    so only a prompt whose group is split between two shares can appear twice."""
    picked: list[Sample] = []
    for part in parts:
        for j, sample in enumerate(part):
            if j == 0 and picked and picked[-1].group == sample.group:
                continue  # the same group, continued in the next share
            picked.append(sample)
    return picked[:limit]


@dataclass
class Rollouts:
    """Per-completion facts of one step (of one process, or gathered from all)."""

    correct: list[bool] = field(default_factory=list)
    well_formed: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    consistent: list[bool] = field(default_factory=list)

    def merge(self, other: Rollouts) -> Rollouts:
        """Both sets of completions together."""
        return Rollouts(
            self.correct + other.correct,
            self.well_formed + other.well_formed,
            self.lengths + other.lengths,
            self.truncated + other.truncated,
            self.consistent + other.consistent,
        )

    def figures(self) -> dict[str, float]:
        """Accuracy, format, length, truncation and think/answer consistency."""
        n = len(self.lengths)
        if n == 0:
            return {}
        return {
            "accuracy": sum(self.correct) / n,
            "format_rate": sum(self.well_formed) / n,
            "completion_len_mean": sum(self.lengths) / n,
            "completion_len_max": float(max(self.lengths)),
            "truncated_frac": sum(self.truncated) / n,
            "consistency": sum(self.consistent) / n,
            "completions": float(n),
        }


def gather_from_all_processes(objects: list[Any]) -> list[Any]:
    """Every process's list, concatenated in rank order (the list itself when alone)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if PartialState().num_processes <= 1:
        return objects
    gathered: list[Any] = gather_object(objects)
    return gathered


class RolloutRecorder:
    """A TRL reward function that returns 0.0 for all and records rollout statistics."""

    __name__ = "rollout_metrics"  # TRL names reward columns after the function

    def __init__(
        self,
        cap: int,
        scorer: Scorer,
        eos_ids: Sequence[int] = (),
        gather: Gather = gather_from_all_processes,
        *,
        keep: int = 0,
        paid: Sequence[Paid] = (),
    ) -> None:
        self.cap = cap
        self.scorer = scorer
        self.eos_ids = set(eos_ids)  # set once the trainer knows them
        self.gather = gather
        self.pending = Rollouts()
        self.keep = keep  # samples kept per step
        self.paid = list(paid)
        self.candidates: list[list[Sample]] = []

    def __call__(
        self,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        answer: Sequence[str],
        prompts: Sequence[Any] = (),
        item_id: Sequence[str | None] = (),
        **kwargs: Any,
    ) -> list[float | None]:
        """Record this step's completions; contribute nothing to the reward."""
        texts = [completion_text(c) for c in completions]
        golds = [str(a) for a in answer]
        items = [ScoreItem(t, g) for t, g in zip(texts, golds, strict=True)]
        # HFRRF's verdicts: the same answer check as accuracy's, and the reason a reader wants.
        verdicts = score("hfrrf", items, scorer=self.scorer)
        self.pending = self.pending.merge(self.measure(texts, completion_ids, verdicts))
        if self.keep:
            rows = zip(texts, completion_ids, verdicts, strict=True)
            samples = [
                self._sample(i, prompts, item_id, golds[i], text, ids, verdict)
                for i, (text, ids, verdict) in enumerate(rows)
            ]
            firsts = [s for i, s in enumerate(samples) if i == 0 or samples[i - 1].group != s.group]
            self.candidates.append(firsts[: self.keep + 1])  # +1: a group split from the last
        zeros: list[float | None] = [0.0] * len(texts)
        return zeros

    def _sample(
        self,
        i: int,
        prompts: Sequence[Any],
        item_ids: Sequence[str | None],
        gold: str,
        text: str,
        ids: Sequence[int],
        verdict: ScoreResult,
    ) -> Sample:
        prompt = _readable(completion_text(prompts[i])) if i < len(prompts) else ""
        item = item_ids[i] if i < len(item_ids) else None
        return Sample(
            group=item or prompt,
            item_id=item,
            prompt=prompt,
            completion=_readable(text),
            answer=_readable(gold),
            reward=paid_total(self.paid, i),
            correct=verdict.answer_ok,
            well_formed=verdict.format_ok,
            reason=verdict.reason,
            length=len(ids),
        )

    def measure(
        self, texts: list[str], ids: Sequence[Sequence[int]], verdicts: Sequence[ScoreResult]
    ) -> Rollouts:
        """The facts of a batch of completions, from their verdicts."""
        # Cut at the cap without an end-of-turn token: the thought was suppressed, not ended.
        truncated = [len(x) >= self.cap and not (x and x[-1] in self.eos_ids) for x in ids]
        return Rollouts(
            correct=[bool(v.answer_ok) for v in verdicts],
            well_formed=[v.format_ok for v in verdicts],
            lengths=[len(x) for x in ids],
            truncated=truncated,
            consistent=[consistency(t, verifier=self.scorer.verifier) is True for t in texts],
        )

    def pop(self) -> dict[str, float]:
        """The figures of the completions recorded since the last pop, over every process."""
        mine, self.pending = self.pending, Rollouts()
        every = Rollouts()
        for part in self.gather([mine]):
            every = every.merge(part)
        return every.figures()

    def pop_samples(self) -> list[Sample]:
        """The samples of the completions recorded since the last pop, over every process
        (each sends only its few candidates)."""
        if not self.keep:
            return []
        mine = first_of_each_prompt(self.candidates, self.keep + 1)
        self.candidates = []
        return first_of_each_prompt(self.gather([mine]), self.keep)


def _readable(text: str) -> str:
    """Text a database column can hold: no NUL characters (a random policy may emit them)."""
    return text.replace("\x00", "\ufffd")
