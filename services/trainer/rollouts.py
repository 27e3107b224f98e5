"""What a GRPO step's completions looked like: recorded by a zero-weight reward function.

TRL hands every reward function the completions, their token ids and the dataset columns
of the step. ``RolloutRecorder`` sits in the reward list with weight 0, so it sees exactly
what the policy produced without changing the reward, and keeps the per-step figures
until a trainer callback picks them up with the loss and KL of the same step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.rewards import ScoreItem, Scorer, completion_text, consistency, score


class RolloutRecorder:
    """A TRL reward function that returns 0.0 for all and records rollout statistics."""

    __name__ = "rollout_metrics"  # TRL names reward columns after the function

    def __init__(self, cap: int, scorer: Scorer, eos_ids: Sequence[int] = ()) -> None:
        self.cap = cap
        self.scorer = scorer
        self.eos_ids = set(eos_ids)  # set once the trainer knows them
        self.pending: dict[str, float] | None = None

    def __call__(
        self,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        answer: Sequence[str],
        **kwargs: Any,
    ) -> list[float | None]:
        """Record this step's statistics; contribute nothing to the reward."""
        texts = [completion_text(c) for c in completions]
        self.pending = self.measure(texts, completion_ids, [str(a) for a in answer])
        zeros: list[float | None] = [0.0] * len(texts)
        return zeros

    def measure(
        self, texts: list[str], ids: Sequence[Sequence[int]], golds: list[str]
    ) -> dict[str, float]:
        """Accuracy, format, length, truncation and think/answer consistency of a batch."""
        n = len(texts)
        verdicts = score("accuracy", [ScoreItem(t, g) for t, g in zip(texts, golds, strict=True)],
                         scorer=self.scorer)  # fmt: skip
        lengths = [len(x) for x in ids]
        # Cut at the cap without an end-of-turn token: the thought was suppressed, not ended.
        truncated = [len(x) >= self.cap and not (x and x[-1] in self.eos_ids) for x in ids]
        agrees = [consistency(t, verifier=self.scorer.verifier) is True for t in texts]
        return {
            "accuracy": sum(bool(v.answer_ok) for v in verdicts) / n,
            "format_rate": sum(v.format_ok for v in verdicts) / n,
            "completion_len_mean": sum(lengths) / n,
            "completion_len_max": float(max(lengths)),
            "truncated_frac": sum(truncated) / n,
            "consistency": sum(agrees) / n,
            "completions": float(n),
        }

    def pop(self) -> dict[str, float]:
        """The figures of the last recorded step (empty if none since the last pop)."""
        figures, self.pending = self.pending or {}, None
        return figures
