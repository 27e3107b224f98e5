"""Reward rules for Vision-R1: format, answer checking, HFRRF, consistency. No torch.

The rules are pure functions; symbolic comparisons run in a ``VerifierPool`` (worker
processes with a hard per-item time limit). Import from here, not from the submodules.
"""

from shared.contracts.rewards import DEFAULT_REWARD
from shared.rewards.consistency import consistency, stated_conclusion
from shared.rewards.pool import InlineVerifier, Verifier, VerifierPool
from shared.rewards.registry import (
    REWARDS,
    RewardSpec,
    TRLReward,
    default_scorer,
    get_reward,
    reward_fn,
    score,
)
from shared.rewards.rules import MathJob, Verdict, judge_fast
from shared.rewards.scoring import Judgement, ScoreItem, Scorer, ScoreResult
from shared.rewards.text import (
    FormatCheck,
    check_format,
    clean_answer,
    completion_text,
    extract_final_answer,
)

__all__ = [
    "DEFAULT_REWARD",
    "REWARDS",
    "FormatCheck",
    "InlineVerifier",
    "Judgement",
    "MathJob",
    "RewardSpec",
    "ScoreItem",
    "ScoreResult",
    "Scorer",
    "TRLReward",
    "Verdict",
    "Verifier",
    "VerifierPool",
    "check_format",
    "clean_answer",
    "completion_text",
    "consistency",
    "default_scorer",
    "extract_final_answer",
    "get_reward",
    "judge_fast",
    "reward_fn",
    "score",
    "stated_conclusion",
]
