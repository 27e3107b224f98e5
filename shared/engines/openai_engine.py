"""The ``openai`` engine: any OpenAI-compatible chat server, through the official client.

Works with ``vllm serve``, SGLang, ``transformers serve`` and hosted APIs such as
DeepSeek's.  The ``openai`` package's async client does the HTTP: retries of transient
failures (429, 5xx, 408/409, timeouts, dropped connections) with exponential backoff and
jitter, honouring ``Retry-After``; other 4xx fail at once.  Retries live there and only
there: an error result that leaves this engine is final.

What the client does not do is kept here: a cap on calls in flight and optional
requests- and tokens-per-minute budgets, all held for the whole process (the engine is
shared by every chunk a worker runs, see ``shared.engines.engine_for``); images as base64
data URLs; the chain of thought read from ``reasoning_content``, ``reasoning`` or
``<think>`` tags.  The API key is read from the environment variable the spec names and
is never logged, stored or returned.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai
from pydantic import SecretStr

from shared.contracts.specs import EngineSpec
from shared.engines.base import GenerationRequest, GenerationResult, failed, params_for
from shared.engines.images import image_data_url
from shared.engines.limits import Slots, TokenBucket
from shared.engines.reasoning import split_reasoning
from shared.errors import EngineError, EngineRequestFailed, ImageRejected, InvalidInput
from shared.settings import secret_from_env

log = logging.getLogger(__name__)

T = TypeVar("T")
IMAGE_TOKENS_GUESS = 1024  # per image, for the token-budget estimate made before a call
CHARS_PER_TOKEN = 3  # conservative: estimates should rather be high than low
NO_KEY = "EMPTY"  # what local servers (vLLM, transformers serve) accept when none is set
_VERSIONED_PATH = re.compile(r"/v\d+$")


def api_base(base_url: str) -> str:
    """The API root under ``base_url``: as given when it ends in ``/v<N>``, else ``/v1``."""
    base = base_url.rstrip("/")
    return base if _VERSIONED_PATH.search(base) else f"{base}/v1"


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end from synchronous code, also from inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="openai-engine") as pool:
        return pool.submit(asyncio.run, coro).result()


def _content_text(content: Any) -> str:
    """Message content as text; some servers return a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def written(content: str, reasoning: str | None) -> str:
    """The completion as the model wrote it: a CoT a server split off goes back in front,
    in ``<think>`` tags (a server's reasoning parser removes them)."""
    if reasoning is None or "</think>" in content:
        return content
    return f"<think>{reasoning}</think>{content}"


def parse_completion(data: Any) -> GenerationResult:
    """A result from a chat-completion JSON body; raises ``EngineRequestFailed`` if malformed."""
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = _content_text(message.get("content"))
        text, reasoning = split_reasoning(content, message)
        usage = data.get("usage") or {}
        return GenerationResult(
            text=text,
            reasoning=reasoning,
            completion=written(content, reasoning),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise EngineRequestFailed(f"malformed completion: {exc!r}", kind="bad_response") from exc


def attempts_made(error: openai.APIError) -> int:
    """HTTP calls the client made before giving up (it numbers its retries in a header)."""
    request = getattr(error, "request", None)
    count = request.headers.get("x-stainless-retry-count") if request is not None else None
    return int(count) + 1 if count and count.isdigit() else 1


def classify(error: openai.APIError) -> tuple[str, str]:
    """A short kind and a message for a call the client gave up on."""
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        kind = "rate_limited" if status == 429 else f"http_{status}"
        snippet = error.response.text[:300].replace("\n", " ")
        return kind, f"HTTP {status} from server: {snippet}"
    if isinstance(error, openai.APITimeoutError):  # a subclass of APIConnectionError
        return "timeout", f"timed out: {error!r}"
    if isinstance(error, openai.APIConnectionError):
        return "connection_error", f"connection failed: {error.__cause__!r}"
    return "bad_response", f"unusable response: {error!r}"


class OpenAIEngine:
    """Chat completions against an OpenAI-compatible server, concurrently and politely."""

    name = "openai"

    def __init__(self, spec: EngineSpec, *, image_max_side: int | None = None) -> None:
        if not spec.base_url:
            raise InvalidInput("engine 'openai' needs base_url", model=spec.model)
        self.spec = spec
        self.model_id = spec.model
        self.base_url = api_base(spec.base_url)
        self._api_key = SecretStr(self._read_key(spec))
        self._image_max_side = image_max_side
        self.slots = Slots(spec.max_in_flight)
        self._requests = TokenBucket(spec.requests_per_minute) if spec.requests_per_minute else None
        self._tokens = TokenBucket(spec.tokens_per_minute) if spec.tokens_per_minute else None
        self._closed = False

    @staticmethod
    def _read_key(spec: EngineSpec) -> str:
        if not spec.api_key_env:
            return NO_KEY
        key = secret_from_env(spec.api_key_env)
        if key is None:
            raise EngineError(
                f"environment variable {spec.api_key_env} (the API key) is not set",
                api_key_env=spec.api_key_env,
            )
        return key

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, same order; failures become error results."""
        if self._closed:
            raise EngineError("the engine is closed", model=self.model_id)
        if not requests:
            return []
        return run_coroutine(self._generate_all(list(requests)))

    def close(self) -> None:
        """Refuse further calls (clients live only as long as one batch)."""
        self._closed = True

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key.get_secret_value(),
            max_retries=self.spec.max_retries,
            timeout=self.spec.timeout_s,
        )
        # Bodies (with base64 images) exist only for requests holding one of these, so a
        # batch of thousands does not encode every image up front.
        building = asyncio.Semaphore(2 * self.spec.max_in_flight)
        async with client:
            calls = (self._one(client, building, r) for r in requests)
            return list(await asyncio.gather(*calls))

    async def _one(
        self, client: openai.AsyncOpenAI, building: asyncio.Semaphore, request: GenerationRequest
    ) -> GenerationResult:
        """Build the body, then call; every problem ends as an error result."""
        started = time.perf_counter()
        async with building:
            try:
                body = await self._body(request)
            except ImageRejected as exc:
                return failed(exc.kind, exc.message, latency_s=time.perf_counter() - started)
            try:
                result = await self._call(client, body, self._estimate_tokens(request, body))
            except openai.APIError as exc:
                kind, message = classify(exc)
                attempts = attempts_made(exc)
                log.warning("%s: %s after %d attempt(s)", self.model_id, kind, attempts)
                elapsed = time.perf_counter() - started
                return failed(kind, message, attempts=attempts, latency_s=elapsed)
            except EngineRequestFailed as exc:
                elapsed = time.perf_counter() - started
                return failed(exc.kind, exc.message, attempts=1, latency_s=elapsed)
            except Exception as exc:  # a bug must not take the batch down; it is logged loudly
                log.exception("%s: unexpected failure", self.model_id)
                elapsed = time.perf_counter() - started
                return failed("internal_error", repr(exc), attempts=1, latency_s=elapsed)
        result.latency_s = time.perf_counter() - started
        return result

    async def _call(
        self, client: openai.AsyncOpenAI, body: dict[str, Any], estimate: int
    ) -> GenerationResult:
        """One logical call (the client's retries included) under the process's limits."""
        async with self.slots:
            if self._requests is not None:
                await self._requests.take(1)
            if self._tokens is not None:
                await self._tokens.take(estimate)
            raw = await client.chat.completions.with_raw_response.create(**body)
        try:
            data = raw.http_response.json()
        except ValueError as exc:
            raise EngineRequestFailed("the response is not JSON", kind="bad_response") from exc
        result = parse_completion(data)
        result.attempts = raw.retries_taken + 1
        used = result.prompt_tokens + result.completion_tokens
        if self._tokens is not None and used:
            self._tokens.give_back(estimate - used)  # settle the estimate with real usage
        return result

    async def _body(self, request: GenerationRequest) -> dict[str, Any]:
        """The chat-completions arguments; images become base64 data URLs."""
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
        if params.seed is not None:
            body["seed"] = params.seed
        if params.top_k is not None:  # not an OpenAI parameter; vLLM and SGLang read it
            body["extra_body"] = {"top_k": params.top_k}
        return body

    @staticmethod
    def _estimate_tokens(request: GenerationRequest, body: dict[str, Any]) -> int:
        """Tokens a call may use, charged before it and corrected from its usage after."""
        chars = len(request.prompt) + len(request.system or "")
        images = IMAGE_TOKENS_GUESS * len(request.images)
        return chars // CHARS_PER_TOKEN + images + int(body["max_tokens"])
