"""What a GRPO step's completions looked like: recorded by a zero-weight reward function.

TRL hands every reward function the completions, their token ids and the dataset columns
of the step. ``RolloutRecorder`` sits in the reward list with weight 0, so it sees exactly
what the policy produced without changing the reward, and keeps the step's per-completion
facts until a trainer callback picks them up with the loss and KL of the same step.

With several training processes each sees only its own share of the completions; the
facts are gathered from every process before the step's figures are computed, so the
figures are over all completions (every process must take part: the callback runs in
each at the same step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.rewards import ScoreItem, Scorer, completion_text, consistency, score

Gather = Callable[[list[Any]], list[Any]]


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
    ) -> None:
        self.cap = cap
        self.scorer = scorer
        self.eos_ids = set(eos_ids)  # set once the trainer knows them
        self.gather = gather
        self.pending = Rollouts()

    def __call__(
        self,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        answer: Sequence[str],
        **kwargs: Any,
    ) -> list[float | None]:
        """Record this step's completions; contribute nothing to the reward."""
        texts = [completion_text(c) for c in completions]
        measured = self.measure(texts, completion_ids, [str(a) for a in answer])
        self.pending = self.pending.merge(measured)
        zeros: list[float | None] = [0.0] * len(texts)
        return zeros

    def measure(self, texts: list[str], ids: Sequence[Sequence[int]], golds: list[str]) -> Rollouts:
        """The facts of a batch of completions."""
        items = [ScoreItem(t, g) for t, g in zip(texts, golds, strict=True)]
        verdicts = score("accuracy", items, scorer=self.scorer)
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
