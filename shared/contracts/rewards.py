"""Wire models of the reward service: the request, the response, the reward list.

The service validates and answers with these; its client builds and reads them too.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_REWARD = "hfrrf"


class ScoreItemIn(BaseModel):
    """One completion (plain text) and its gold answer."""

    model_config = ConfigDict(extra="forbid")

    completion: str
    answer: str = ""


class ScoreRequest(BaseModel):
    """A batch to score with one registered reward."""

    model_config = ConfigDict(extra="forbid")

    reward: str = DEFAULT_REWARD
    items: list[ScoreItemIn]


class ScoreDetail(BaseModel):
    """Why an item got its reward."""

    format_ok: bool
    answer_ok: bool | None
    extracted: str
    reason: str


class ScoreResponse(BaseModel):
    """One reward per item (null = no verdict) and the details, in request order."""

    rewards: list[float | None]
    details: list[ScoreDetail]


class RewardInfo(BaseModel):
    """A registered reward."""

    name: str
    description: str
    uses_answer: bool
    default: bool = Field(description="True for the reward used when none is named.")


class RewardList(BaseModel):
    """Every registered reward."""

    rewards: list[RewardInfo]
