"""The one interface every model backend implements, and the request/result it speaks.

An engine takes a batch of requests and returns one result per request, in order.  A
problem with one request (a bad image, a server error after retries) becomes an error
result for that request; ``generate`` raises only when the engine itself is unusable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.contracts.specs import EngineSpec, GenerationParams


@dataclass(frozen=True)
class GenerationRequest:
    """One chat call: an optional system turn, then a user turn of images followed by text."""

    prompt: str
    images: tuple[str, ...] = ()  # local file paths or file:// URIs
    system: str | None = None
    params: GenerationParams | None = None  # overrides the spec's generation params


@dataclass
class GenerationResult:
    """What one request produced, or why it failed (``error`` set, ``text`` empty).

    ``text`` is the answer with any chain of thought split off into ``reasoning``;
    ``completion`` is what the model wrote, as written (``<think>`` tags included), which
    evaluation and rollouts judge.
    """

    text: str = ""
    reasoning: str | None = None
    completion: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1  # calls made to the model; 0 when the request failed before any call
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        """True when the request produced an answer."""
        return self.error is None


class Engine(Protocol):
    """A model backend: batched chat generation, chosen by name in an ``EngineSpec``."""

    name: str
    model_id: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, same order; never raises for a per-request problem."""
        ...

    def close(self) -> None:
        """Release connections, threads and (where owned) model memory."""
        ...


def failed(
    kind: str, message: str, *, attempts: int = 0, latency_s: float = 0.0
) -> GenerationResult:
    """An error result with a machine-readable ``kind``."""
    return GenerationResult(
        finish_reason="error",
        attempts=attempts,
        latency_s=latency_s,
        error=message,
        error_kind=kind,
    )


def params_for(spec: EngineSpec, request: GenerationRequest) -> GenerationParams:
    """The generation params that apply to ``request``: its own, else the spec's."""
    return request.params if request.params is not None else spec.generation
