"""The ``openai`` engine: any OpenAI-compatible chat server over async HTTP.

Works with ``vllm serve``, SGLang, ``transformers serve`` and hosted APIs such as
DeepSeek's.  Every request of a batch runs concurrently under a cap on requests in
flight; transient failures (429, 5xx, 408/409, timeouts, dropped connections) are retried
with exponential backoff and full jitter, honouring ``Retry-After``; other 4xx fail at
once.  Optional requests- and tokens-per-minute buckets keep under provider quotas.  The
API key is read from the environment variable the spec names and lives only in the HTTP
client's headers: it is never logged, stored or returned.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from shared.contracts.specs import EngineSpec
from shared.engines.aio import BackgroundLoop
from shared.engines.base import GenerationRequest, GenerationResult, failed, params_for
from shared.engines.images import image_data_url
from shared.engines.ratelimit import TokenBucket
from shared.engines.reasoning import split_reasoning
from shared.errors import EngineError, EngineRequestFailed, ImageRejected, InvalidInput
from shared.settings import secret_from_env

log = logging.getLogger(__name__)

RETRYABLE_4XX = {408, 409, 429}
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer is treated as asking for this
IMAGE_TOKENS_GUESS = 1024  # per image, for the token-budget estimate made before a call
CHARS_PER_TOKEN = 3  # conservative: estimates should rather be high than low
_VERSIONED_PATH = re.compile(r"/v\d+$")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(max_s, base_s * 2**(n-1)))."""

    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        jittered = rng.uniform(0.0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))
        if retry_after is None:
            return jittered
        return max(min(retry_after, MAX_RETRY_AFTER_S), jittered)


class CallFailed(EngineRequestFailed):
    """One HTTP attempt failed; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(
        self, message: str, *, kind: str, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message, kind=kind, retryable=retryable)
        self.retry_after = retry_after


def chat_url(base_url: str) -> str:
    """The chat-completions endpoint under ``base_url`` (with or without a ``/v1`` suffix)."""
    base = base_url.rstrip("/")
    if _VERSIONED_PATH.search(base):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def failure_from_response(response: httpx.Response) -> CallFailed:
    """Classify a non-2xx response as retryable or not, with a short kind."""
    status = response.status_code
    retryable = status in RETRYABLE_4XX or status >= 500
    kind = "rate_limited" if status == 429 else f"http_{status}"
    snippet = response.text[:300].replace("\n", " ")
    return CallFailed(
        f"HTTP {status} from server: {snippet}",
        kind=kind,
        retryable=retryable,
        retry_after=parse_retry_after(response.headers) if retryable else None,
    )


def _content_text(content: Any) -> str:
    """Message content as text; some servers return a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def parse_completion(data: Any) -> GenerationResult:
    """A result from a chat-completion JSON body; raises ``CallFailed`` if malformed."""
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text, reasoning = split_reasoning(_content_text(message.get("content")), message)
        usage = data.get("usage") or {}
        return GenerationResult(
            text=text,
            reasoning=reasoning,
            finish_reason=str(choice.get("finish_reason") or "stop"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        message = f"malformed completion: {exc!r}"
        raise CallFailed(message, kind="bad_response", retryable=True) from exc


class OpenAIEngine:
    """Chat completions against an OpenAI-compatible server, concurrently and politely."""

    name = "openai"

    def __init__(
        self,
        spec: EngineSpec,
        *,
        backoff: Backoff | None = None,
        image_max_side: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not spec.base_url:
            raise InvalidInput("engine 'openai' needs base_url", model=spec.model)
        self.spec = spec
        self.model_id = spec.model
        self.url = chat_url(spec.base_url)
        self._backoff = backoff or Backoff()
        self._image_max_side = image_max_side
        self._rng = rng or random.Random()
        self._requests = TokenBucket(spec.requests_per_minute) if spec.requests_per_minute else None
        self._tokens = TokenBucket(spec.tokens_per_minute) if spec.tokens_per_minute else None
        self._in_flight = asyncio.Semaphore(spec.max_in_flight)
        # Bodies (with base64 images) exist only for requests holding one of these slots,
        # so a batch of thousands does not encode every image up front.
        self._active = asyncio.Semaphore(2 * spec.max_in_flight)
        headers = {}
        if spec.api_key_env:
            key = secret_from_env(spec.api_key_env)
            if key is None:
                raise EngineError(
                    f"environment variable {spec.api_key_env} (the API key) is not set",
                    api_key_env=spec.api_key_env,
                )
            headers["Authorization"] = f"Bearer {key}"
        self._loop = BackgroundLoop(f"openai-engine-{spec.model[-40:]}")
        self._client = self._loop.run(self._make_client(headers))

    async def _make_client(self, headers: dict[str, str]) -> httpx.AsyncClient:
        """The HTTP client, created on the engine's own loop, which is the only one using it."""
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.spec.timeout_s),
            limits=httpx.Limits(max_connections=self.spec.max_in_flight),
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, same order; failures become error results."""
        if not requests:
            return []
        return self._loop.run(self._generate_all(list(requests)))

    def close(self) -> None:
        """Close the HTTP connections and stop the engine's event loop."""
        try:
            self._loop.run(self._client.aclose())
        except EngineError:
            return  # already closed
        self._loop.stop()

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: GenerationRequest) -> GenerationResult:
        """Build the body, then call with retries; every problem ends as an error result."""
        async with self._active:
            return await self._with_retries(request)

    async def _with_retries(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        try:
            body = await self._body(request)
        except ImageRejected as exc:
            return failed(exc.kind, exc.message, latency_s=time.perf_counter() - started)
        estimate = self._estimate_tokens(request, body["max_tokens"])
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._attempt(body, estimate)
            except CallFailed as exc:
                if not exc.retryable or attempt > self.spec.max_retries:
                    log.warning("%s: %s after %d attempt(s)", self.model_id, exc.kind, attempt)
                    elapsed = time.perf_counter() - started
                    return failed(exc.kind, exc.message, attempts=attempt, latency_s=elapsed)
                delay = self._backoff.delay(attempt, exc.retry_after, self._rng)
                log.info("%s: %s, retry %d in %.2f s", self.model_id, exc.kind, attempt, delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug must not take the batch down; it is logged loudly
                log.exception("%s: unexpected failure", self.model_id)
                elapsed = time.perf_counter() - started
                return failed("internal_error", repr(exc), attempts=attempt, latency_s=elapsed)
            else:
                result.attempts = attempt
                result.latency_s = time.perf_counter() - started
                return result

    async def _attempt(self, body: dict[str, Any], estimate: int) -> GenerationResult:
        """One HTTP call under the concurrency cap and the rate limits."""
        async with self._in_flight:
            if self._requests is not None:
                await self._requests.take(1)
            if self._tokens is not None:
                await self._tokens.take(estimate)
            try:
                response = await self._client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                raise CallFailed(f"timed out: {exc!r}", kind="timeout", retryable=True) from exc
            except httpx.TransportError as exc:
                message = f"connection failed: {exc!r}"
                raise CallFailed(message, kind="connection_error", retryable=True) from exc
        if not response.is_success:
            raise failure_from_response(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise CallFailed("response is not JSON", kind="bad_response", retryable=True) from exc
        result = parse_completion(data)
        used = result.prompt_tokens + result.completion_tokens
        if self._tokens is not None and used:
            self._tokens.give_back(estimate - used)  # settle the estimate with real usage
        return result

    async def _body(self, request: GenerationRequest) -> dict[str, Any]:
        """The chat-completions JSON body; images become base64 data URLs."""
        params = params_for(self.spec, request)
        urls = [
            await asyncio.to_thread(image_data_url, ref, self._image_max_side)
            for ref in request.images
        ]
        user: str | list[dict[str, Any]] = request.prompt
        if urls:  # plain-string content for text-only turns: some APIs accept nothing else
            user = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
            user.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": user})
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": False,
        }
        if params.top_k is not None:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    @staticmethod
    def _estimate_tokens(request: GenerationRequest, max_tokens: int) -> int:
        """Tokens a call may use, charged before it and corrected from its usage after."""
        chars = len(request.prompt) + len(request.system or "")
        return chars // CHARS_PER_TOKEN + IMAGE_TOKENS_GUESS * len(request.images) + max_tokens
