"""Client of the reward service, for trainers in other processes (ours, TRL, verl, EasyR1).

client = RewardClient("http://127.0.0.1:8001")
results = client.score("hfrrf", completions, answers)   # list[ScoreResult]
reward_funcs = [as_trl_reward("hfrrf", base_url="http://127.0.0.1:8001")]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from shared.contracts.api import ErrorOut
from shared.contracts.rewards import (
    DEFAULT_REWARD,
    RewardList,
    ScoreItemIn,
    ScoreRequest,
    ScoreResponse,
)
from shared.errors import InvalidInput, PayloadTooLarge, RewardServiceError, VR1Error
from shared.rewards.scoring import ScoreResult
from shared.rewards.text import completion_text

DEFAULT_URL = "http://127.0.0.1:8001"


def _payload(reward: str, completions: Sequence[Any], answers: Sequence[Any]) -> dict[str, Any]:
    """The request body; completions may be strings or chat-message lists."""
    if len(completions) != len(answers):
        raise InvalidInput(f"{len(completions)} completions but {len(answers)} answers")
    items = [
        ScoreItemIn(completion=completion_text(c), answer=a if isinstance(a, str) else str(a))
        for c, a in zip(completions, answers, strict=True)
    ]
    return ScoreRequest(reward=reward, items=items).model_dump()


def _results(response: httpx.Response) -> list[ScoreResult]:
    """Results from a response, or the typed error its status stands for."""
    if response.status_code != 200:
        raise _error(response)
    try:
        body = ScoreResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise RewardServiceError(f"malformed reward response: {exc}") from exc
    return [
        ScoreResult(reward, d.format_ok, d.answer_ok, d.extracted, d.reason)
        for reward, d in zip(body.rewards, body.details, strict=True)
    ]


def _error(response: httpx.Response) -> VR1Error:
    """413 and 422 are the caller's fault; anything else is the service's."""
    try:
        message = ErrorOut.model_validate_json(response.content).message
    except ValidationError:
        message = response.text
    if response.status_code == 413:
        return PayloadTooLarge(message)
    if response.status_code == 422:
        return InvalidInput(message)
    return RewardServiceError(message, status=response.status_code)


class RewardClient:
    """Synchronous client: one POST per batch."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 120.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def score(
        self, reward: str, completions: Sequence[Any], answers: Sequence[Any]
    ) -> list[ScoreResult]:
        """Score a batch; raises a typed error on 413/422 or when the service is down."""
        try:
            response = self._http.post("/v1/score", json=_payload(reward, completions, answers))
        except httpx.HTTPError as exc:
            raise RewardServiceError(f"reward service unreachable: {exc}") from exc
        return _results(response)

    def rewards(self) -> list[str]:
        """Names of the rewards the service offers."""
        response = self._http.get("/v1/rewards")
        if response.status_code != 200:
            raise _error(response)
        return [r.name for r in RewardList.model_validate_json(response.content).rewards]

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRewardClient:
    """Asynchronous client, for trainers that score while they generate."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 120.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def score(
        self, reward: str, completions: Sequence[Any], answers: Sequence[Any]
    ) -> list[ScoreResult]:
        """Score a batch; raises a typed error on 413/422 or when the service is down."""
        try:
            body = _payload(reward, completions, answers)
            response = await self._http.post("/v1/score", json=body)
        except httpx.HTTPError as exc:
            raise RewardServiceError(f"reward service unreachable: {exc}") from exc
        return _results(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


class RemoteTRLReward:
    """A service-side reward in TRL's form ``f(completions, answer=[...], **kw)``; picklable."""

    def __init__(
        self, reward: str = DEFAULT_REWARD, base_url: str = DEFAULT_URL, timeout: float = 120.0
    ) -> None:
        self.reward, self.base_url, self.timeout = reward, base_url, timeout
        self.__name__ = f"{reward}_reward"
        self._client: RewardClient | None = None  # kept open: one connection for all steps

    def __call__(
        self, completions: Sequence[Any], answer: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float | None]:
        """Rewards for one batch of completions, via the service."""
        golds = answer if answer is not None else kwargs.get("solution")
        if golds is None:
            golds = [""] * len(completions)
        if self._client is None:
            self._client = RewardClient(self.base_url, self.timeout)
        return [r.reward for r in self._client.score(self.reward, completions, golds)]

    def __getstate__(self) -> dict[str, Any]:
        return {"reward": self.reward, "base_url": self.base_url, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["reward"], state["base_url"], state["timeout"])  # type: ignore[misc]


def as_trl_reward(
    reward_name: str = DEFAULT_REWARD, *, base_url: str = DEFAULT_URL, timeout: float = 120.0
) -> RemoteTRLReward:
    """The named service reward as a TRL/verl/EasyR1-style reward function."""
    return RemoteTRLReward(reward_name, base_url, timeout)
