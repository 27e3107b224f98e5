"""Rewards by name, and each reward in TRL's reward-function form.

``reward_fn("hfrrf")`` is ``f(completions, answer=[...], **kw) -> list[float | None]`` and
can be handed to TRL's ``GRPOTrainer(reward_funcs=[...])`` as it is; it pickles by name.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.contracts.rewards import DEFAULT_REWARD
from shared.errors import InvalidInput, UnknownReward
from shared.rewards.pool import VerifierPool
from shared.rewards.scoring import (
    Combine,
    ScoreItem,
    Scorer,
    ScoreResult,
    accuracy,
    format_only,
    hfrrf,
)
from shared.rewards.text import completion_text


@dataclass(frozen=True)
class RewardSpec:
    """A registered reward: its name, what it pays for, and whether it reads the gold."""

    name: str
    description: str
    combine: Combine
    uses_answer: bool = True


REWARDS: dict[str, RewardSpec] = {
    spec.name: spec
    for spec in (
        RewardSpec(
            "hfrrf",
            "1.0 only if <think>…</think><answer>…</answer> is well formed and the answer "
            "is right; else 0.0 (Vision-R1's hard formatting result reward).",
            hfrrf,
        ),
        RewardSpec(
            "format",
            "1.0 if the completion is well formed; the answer is ignored.",
            format_only,
            uses_answer=False,
        ),
        RewardSpec(
            "accuracy", "1.0 if the final answer is right; the format is ignored.", accuracy
        ),
    )
}


def get_reward(name: str) -> RewardSpec:
    """The registered reward called ``name``; raises ``UnknownReward`` otherwise."""
    spec = REWARDS.get(name)
    if spec is None:
        raise UnknownReward(name, known=sorted(REWARDS))
    return spec


def score(
    name: str, items: Sequence[ScoreItem], *, scorer: Scorer | None = None
) -> list[ScoreResult]:
    """Score a batch with the named reward (the shared process pool unless given a scorer)."""
    spec = get_reward(name)
    return (scorer or default_scorer()).score(spec.combine, items, uses_answer=spec.uses_answer)


_default: Scorer | None = None
_default_lock = threading.Lock()


def default_scorer() -> Scorer:
    """The process-wide scorer backed by a lazily started ``VerifierPool``."""
    global _default
    with _default_lock:
        if _default is None:
            pool = VerifierPool()
            atexit.register(pool.close)
            _default = Scorer(pool)
        return _default


class TRLReward:
    """A registered reward as a TRL reward function; pickles by name, not by pool."""

    def __init__(self, name: str = DEFAULT_REWARD, scorer: Scorer | None = None) -> None:
        self.spec = get_reward(name)
        self.__name__ = f"{name}_reward"
        self._scorer = scorer

    def __call__(
        self, completions: Sequence[Any], answer: Sequence[str] | None = None, **kwargs: Any
    ) -> list[float | None]:
        """Rewards for TRL's completions (strings or message lists) and the gold column."""
        golds = _gold_column(len(completions), answer, kwargs, required=self.spec.uses_answer)
        items = [ScoreItem(completion_text(c), g) for c, g in zip(completions, golds, strict=True)]
        return [r.reward for r in score(self.spec.name, items, scorer=self._scorer)]

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.spec.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"])  # type: ignore[misc]


def _gold_column(
    n: int, answer: Sequence[str] | None, kwargs: dict[str, Any], *, required: bool
) -> list[str]:
    """The gold answers from the `answer` column (or TRL's `solution`), one per completion."""
    golds = answer if answer is not None else kwargs.get("solution")
    if golds is None:
        if required:
            raise InvalidInput("this reward needs the gold answers in an `answer` column")
        return [""] * n
    if len(golds) != n:
        raise InvalidInput(f"{n} completions but {len(golds)} answers")
    return [g if isinstance(g, str) else str(g) for g in golds]


def reward_fn(name: str = DEFAULT_REWARD, *, scorer: Scorer | None = None) -> TRLReward:
    """The named reward as ``f(completions, answer=[...], **kw) -> list[float | None]``."""
    return TRLReward(name, scorer)
