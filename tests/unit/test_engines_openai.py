"""The ``openai`` engine's orchestration against a real local HTTP server with scripted replies:
retries and backoff, the concurrency cap, rate limits, reasoning fields, images, API keys."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.contracts.specs import EngineSpec, GenerationParams
from shared.engines import GenerationRequest, make_engine
from shared.engines.openai_engine import Backoff, OpenAIEngine, chat_url, parse_retry_after
from shared.engines.ratelimit import TokenBucket
from shared.errors import EngineError
from tests.helpers import write_image
from tests.openai_standin import StandinServer, Step, running

FAST = Backoff(base_s=0.01, max_s=0.05)
MakeEngine = Callable[..., OpenAIEngine]


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinServer]:
    with running(StandinServer()) as server:
        yield server


@pytest.fixture
def server(standin: StandinServer) -> StandinServer:
    standin.reset()
    return standin


@pytest.fixture
def make(server: StandinServer) -> Iterator[MakeEngine]:
    engines: list[OpenAIEngine] = []

    def build(**fields: Any) -> OpenAIEngine:
        spec = EngineSpec(engine="openai", model="standin", base_url=server.base_url, **fields)
        engine = OpenAIEngine(spec, backoff=FAST)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


def ask(*texts: str) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=text) for text in texts]


def test_429_then_500_then_success_is_retried(server: StandinServer, make: MakeEngine) -> None:
    server.plan("flaky", Step(429, headers={"Retry-After": "1"}), Step(500), Step(200))
    [result] = make().generate(ask("flaky"))
    assert result.ok, result.error
    assert result.attempts == 3
    assert result.text == "echo: flaky"
    assert result.latency_s >= 1.0  # the Retry-After of the 429 was honoured
    assert server.attempts["flaky"] == 3


def test_persistent_500_fails_alone(server: StandinServer, make: MakeEngine) -> None:
    server.plan("broken", Step(500))
    results = make(max_retries=2).generate(ask("fine 1", "broken", "fine 2"))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_kind == "http_500"
    assert results[1].attempts == 3
    assert results[1].text == ""
    assert results[1].finish_reason == "error"
    assert server.attempts["broken"] == 3


def test_400_is_not_retried(server: StandinServer, make: MakeEngine) -> None:
    server.plan("bad request", Step(400))
    [result] = make(max_retries=5).generate(ask("bad request"))
    assert result.error_kind == "http_400"
    assert result.attempts == 1
    assert server.attempts["bad request"] == 1


def test_persistent_429_ends_as_rate_limited(server: StandinServer, make: MakeEngine) -> None:
    server.plan("busy", Step(429, headers={"retry-after-ms": "20"}))
    [result] = make(max_retries=2).generate(ask("busy"))
    assert result.error_kind == "rate_limited"
    assert result.attempts == 3


def test_timeouts_are_retried(server: StandinServer, make: MakeEngine) -> None:
    server.plan("slow once", Step(delay_s=1.0), Step())
    server.plan("always slow", Step(delay_s=1.0))
    results = make(timeout_s=0.3, max_retries=1).generate(ask("slow once", "always slow"))
    assert results[0].ok
    assert results[0].attempts == 2
    assert results[1].error_kind == "timeout"
    assert results[1].attempts == 2


def test_connection_errors_are_retried_then_reported(make: MakeEngine) -> None:
    spec = EngineSpec(engine="openai", model="m", base_url="http://127.0.0.1:9", max_retries=1)
    engine = OpenAIEngine(spec, backoff=FAST)
    try:
        [result] = engine.generate(ask("anyone there?"))
    finally:
        engine.close()
    assert result.error_kind == "connection_error"
    assert result.attempts == 2


def test_requests_in_flight_never_exceed_the_cap(server: StandinServer, make: MakeEngine) -> None:
    texts = [f"q{i}" for i in range(12)]
    for text in texts:
        server.plan(text, Step(delay_s=0.15))
    results = make(max_in_flight=3).generate(ask(*texts))
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [f"echo: {t}" for t in texts]  # order kept
    assert server.max_in_flight == 3


def test_requests_per_minute_limit_spreads_a_burst(server: StandinServer, make: MakeEngine) -> None:
    texts = [f"burst {i}" for i in range(10)]
    started = time.monotonic()
    assert all(r.ok for r in make().generate(ask(*texts)))
    unlimited = time.monotonic() - started
    server.reset()
    started = time.monotonic()
    # 240/min = 4/s with a one-second bucket: 4 at once, then one every 0.25 s (1.5 s)
    assert all(r.ok for r in make(requests_per_minute=240).generate(ask(*texts)))
    limited = time.monotonic() - started
    assert limited >= 1.3
    assert limited > unlimited + 1.0
    stamps = sorted(r.at for r in server.received)
    assert stamps[-1] - stamps[0] >= 1.2


def test_tokens_per_minute_limit_slows_large_requests(make: MakeEngine) -> None:
    params = GenerationParams(max_new_tokens=100)
    requests = [GenerationRequest(prompt=f"t{i}", params=params) for i in range(4)]
    started = time.monotonic()
    # 3000/min = 50 tokens/s, bucket of 50.  Each call is charged ~100 up front and 85 come
    # back from its usage (15 used), so each call after the first waits ~0.3 s.
    assert all(r.ok for r in make(tokens_per_minute=3000).generate(requests))
    assert time.monotonic() - started >= 0.6


def test_token_bucket_charges_waits_and_settles() -> None:
    now = [0.0]
    bucket = TokenBucket(600, clock=lambda: now[0])  # 10 per second, holds 10
    assert bucket.capacity == 10
    assert bucket.wait_time(5) == 0
    bucket._level -= 25  # a charge larger than the bucket leaves a debt
    assert bucket.wait_time(5) == pytest.approx(2.0)  # from -15 up to 5 at 10/s
    bucket.give_back(20)  # the call used less than estimated
    assert bucket.wait_time(5) == 0
    now[0] = 100.0
    assert bucket.wait_time(1000) == 0  # refills only up to capacity; big asks need a full one
    assert asyncio.run(bucket.take(3)) == 0
    assert bucket.wait_time(10) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("message", "text", "reasoning"),
    [
        ({"content": "A", "reasoning_content": "think A"}, "A", "think A"),
        ({"content": "B", "reasoning": "think B"}, "B", "think B"),
        ({"content": "<think>think C</think>\nC"}, "C", "think C"),
        ({"content": "think D</think>D"}, "D", "think D"),
        ({"content": "E"}, "E", None),
    ],
)
def test_reasoning_is_read_from_each_form(
    server: StandinServer, make: MakeEngine, message: dict[str, Any], text: str, reasoning: str
) -> None:
    server.plan("why?", Step(message={"role": "assistant", **message}))
    [result] = make().generate(ask("why?"))
    assert (result.text, result.reasoning) == (text, reasoning)


def test_usage_and_finish_reason_are_recorded(server: StandinServer, make: MakeEngine) -> None:
    server.plan("long", Step(finish_reason="length"))
    [result] = make().generate(ask("long"))
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (11, 5)


def test_image_goes_as_a_data_url_and_bad_images_fail_alone(
    server: StandinServer, make: MakeEngine, tmp_path: Path
) -> None:
    picture = write_image(tmp_path / "red.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    requests = [
        GenerationRequest(prompt="what colour?", images=(str(picture),), system="Be brief."),
        GenerationRequest(prompt="broken", images=(str(broken),)),
        GenerationRequest(prompt="missing", images=(str(tmp_path / "nope.png"),)),
    ]
    results = make().generate(requests)
    assert results[0].ok
    assert [r.error_kind for r in results[1:]] == ["image_unreadable", "image_unreadable"]
    assert [r.attempts for r in results[1:]] == [0, 0]  # never sent
    [received] = server.received
    system, user = received.body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": "what colour?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == picture.read_bytes()


def test_body_carries_model_and_request_params(server: StandinServer, make: MakeEngine) -> None:
    params = GenerationParams(max_new_tokens=7, temperature=0.0, top_p=0.5, top_k=3, seed=11)
    make().generate([GenerationRequest(prompt="p", params=params)])
    body = server.received[0].body
    assert body["model"] == "standin"
    assert body["messages"] == [{"role": "user", "content": "p"}]
    picked = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed")}
    assert picked == {"max_tokens": 7, "temperature": 0.0, "top_p": 0.5, "top_k": 3, "seed": 11}


def test_api_key_comes_from_the_named_variable(
    server: StandinServer, make: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VR1_TEST_API_KEY", "sk-test-secret")
    engine = make(api_key_env="VR1_TEST_API_KEY")
    engine.generate(ask("hello"))
    assert server.received[0].headers["authorization"] == "Bearer sk-test-secret"
    assert "sk-test-secret" not in repr(vars(engine)) + engine.spec.model_dump_json()


def test_missing_api_key_variable_is_an_error(
    make: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VR1_UNSET_KEY", raising=False)
    with pytest.raises(EngineError, match="VR1_UNSET_KEY"):
        make(api_key_env="VR1_UNSET_KEY")


def test_works_from_threads_and_from_inside_a_running_loop(make: MakeEngine) -> None:
    engine = make()

    async def inside_loop() -> str:
        return engine.generate(ask("from a loop"))[0].text

    with ThreadPoolExecutor(max_workers=3) as pool:
        texts = list(pool.map(lambda t: engine.generate(ask(t))[0].text, ["a", "b", "c"]))
    assert texts == ["echo: a", "echo: b", "echo: c"]
    assert asyncio.run(inside_loop()) == "echo: from a loop"
    assert engine.generate([]) == []


def test_make_engine_builds_the_openai_backend(server: StandinServer) -> None:
    spec = EngineSpec(engine="openai", model="standin", base_url=server.base_url + "/v1/")
    engine = make_engine(spec)
    try:
        assert (engine.name, engine.model_id) == ("openai", "standin")
        assert engine.generate(ask("via factory"))[0].text == "echo: via factory"
    finally:
        engine.close()
    engine.close()  # twice is harmless
    with pytest.raises(EngineError):
        engine.generate(ask("after close"))


def test_chat_url_and_retry_after_parsing() -> None:
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert (
        chat_url("https://api.deepseek.com/v1/") == "https://api.deepseek.com/v1/chat/completions"
    )
    assert chat_url("http://h/openai/v2") == "http://h/openai/v2/chat/completions"
    assert parse_retry_after(httpx.Headers({"Retry-After": "2.5"})) == 2.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({})) is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = parse_retry_after(httpx.Headers({"Retry-After": later}))
    assert seconds is not None
    assert 25 < seconds <= 30
