"""The ``openai`` engine's orchestration against a real local HTTP server with scripted replies:
retries through the official client, the process-wide concurrency cap and rate limits
(checked with counters and an injected clock, not with elapsed time), reasoning fields,
images, API keys, and one engine per process."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared import engines
from shared.contracts.specs import EngineSpec, GenerationParams
from shared.engines import GenerationRequest, engine_for, make_engine
from shared.engines.limits import Slots, TokenBucket
from shared.engines.openai_engine import OpenAIEngine, api_base
from shared.errors import EngineError
from tests.helpers import write_image
from tests.openai_standin import StandinServer, Step, running

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
    built: list[OpenAIEngine] = []

    def build(**fields: Any) -> OpenAIEngine:
        spec = EngineSpec(engine="openai", model="standin", base_url=server.base_url, **fields)
        engine = OpenAIEngine(spec)
        built.append(engine)
        return engine

    yield build
    for engine in built:
        engine.close()


def ask(*texts: str) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=text) for text in texts]


def test_429_then_500_then_success_is_retried(server: StandinServer, make: MakeEngine) -> None:
    server.plan("flaky", Step(429, headers={"Retry-After": "1"}), Step(500), Step(200))
    [result] = make().generate(ask("flaky"))
    assert result.ok, result.error
    assert result.attempts == 3
    assert result.text == "echo: flaky"
    assert server.attempts["flaky"] == 3
    # The official client numbers its retries; the server saw 0, 1, 2.
    assert [r.headers.get("x-stainless-retry-count") for r in server.received] == ["0", "1", "2"]
    # Each wait was the server's: a second after the 429's Retry-After (the client's own
    # first backoff is under 0.5 s), 10 ms after the 500 (its retry-after-ms).
    first, second, third = (r.at for r in server.received)
    assert second - first >= 1.0
    assert third - second < 0.5


def test_persistent_500_fails_alone(server: StandinServer, make: MakeEngine) -> None:
    server.plan("broken", Step(500))
    results = make(max_retries=2).generate(ask("fine 1", "broken", "fine 2"))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_kind == "http_500"
    assert "HTTP 500" in (results[1].error or "")
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


def test_connection_errors_are_retried_then_reported() -> None:
    spec = EngineSpec(engine="openai", model="m", base_url="http://127.0.0.1:9", max_retries=1)
    [result] = OpenAIEngine(spec).generate(ask("anyone there?"))
    assert result.error_kind == "connection_error"
    assert result.attempts == 2


def test_requests_in_flight_never_exceed_the_cap(server: StandinServer, make: MakeEngine) -> None:
    texts = [f"q{i}" for i in range(12)]
    for text in texts:
        server.plan(text, Step(delay_s=0.15))
    engine = make(max_in_flight=3)
    results = engine.generate(ask(*texts))
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [f"echo: {t}" for t in texts]  # order kept
    assert server.max_in_flight == 3
    assert engine.slots.in_use_peak == 3


def test_the_cap_holds_across_threads_sharing_one_engine(
    server: StandinServer, make: MakeEngine
) -> None:
    """Worker threads each run their own event loop; the engine's cap spans them all."""
    texts = [f"t{i}" for i in range(16)]
    for text in texts:
        server.plan(text, Step(delay_s=0.1))
    engine = make(max_in_flight=2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        chunks = [texts[k::4] for k in range(4)]
        results = [
            r for batch in pool.map(lambda c: engine.generate(ask(*c)), chunks) for r in batch
        ]
    assert all(r.ok for r in results)
    assert server.max_in_flight == 2
    assert engine.slots.in_use_peak == 2


def test_slots_hand_freed_places_to_waiters_on_other_loops() -> None:
    slots = Slots(2)
    held = 0
    peak = 0
    lock = threading.Lock()

    async def hold() -> None:
        nonlocal held, peak
        async with slots:
            with lock:
                held += 1
                peak = max(peak, held)
            await asyncio.sleep(0.01)
            with lock:
                held -= 1

    async def many() -> None:
        await asyncio.gather(*(hold() for _ in range(10)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert peak == 2
    assert slots.in_use == 0
    assert slots.in_use_peak == 2


def test_a_cancelled_waiter_gives_its_place_on() -> None:
    async def scenario() -> int:
        slots = Slots(1)
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        slots.release()  # handed to the cancelled waiter, which passes it on
        await asyncio.sleep(0)
        await asyncio.wait_for(slots.acquire(), 5)
        return slots.in_use

    assert asyncio.run(scenario()) == 1


def test_token_bucket_reserves_in_arrival_order() -> None:
    now = [0.0]
    bucket = TokenBucket(240, clock=lambda: now[0])  # 4 per second, holds 4
    assert bucket.capacity == 4
    # A burst of ten: four at once, then one every quarter second, in the order asked.
    waits = [bucket.reserve(1) for _ in range(10)]
    assert waits[:4] == [0, 0, 0, 0]
    assert waits[4:] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    now[0] = 10.0
    assert bucket.reserve(1) == 0  # refilled, but never beyond one second's worth: 3 left
    assert bucket.reserve(10) == pytest.approx(0.25)  # a big charge waits for a full bucket…
    assert bucket.reserve(1) == pytest.approx(2.0)  # …and the next caller waits off its debt


def test_token_bucket_settles_estimates() -> None:
    now = [0.0]
    bucket = TokenBucket(600, clock=lambda: now[0])  # 10 per second, holds 10
    assert bucket.reserve(25) == 0  # a charge larger than the bucket leaves a debt
    assert bucket.reserve(5) == pytest.approx(2.0)  # from -15 up to 5 at 10/s
    bucket.give_back(30)  # both calls used less than estimated
    assert bucket.reserve(5) == 0
    assert asyncio.run(bucket.take(0)) == 0


@pytest.mark.parametrize(
    ("message", "text", "reasoning"),
    [
        ({"content": "A", "reasoning_content": "think A"}, "A", "think A"),
        ({"content": "B", "reasoning": "think B"}, "B", "think B"),
        ({"content": "<think>think C</think>\nC"}, "C", "think C"),
        ({"content": "think D</think>D"}, "D", "think D"),
        ({"content": "E"}, "E", None),
        ({"content": None, "reasoning": "cut off"}, "", "cut off"),
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
    assert result.attempts == 1


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
    assert (engine.name, engine.model_id) == ("openai", "standin")
    assert engine.generate(ask("via factory"))[0].text == "echo: via factory"
    engine.close()
    engine.close()  # twice is harmless
    with pytest.raises(EngineError):
        engine.generate(ask("after close"))


def test_one_engine_per_process_for_specs_that_differ_only_in_sampling(
    server: StandinServer,
) -> None:
    engines.close_engines()
    base = EngineSpec(engine="openai", model="standin", base_url=server.base_url)
    try:
        first = engine_for(base)
        greedy = engine_for(base.model_copy(update={"generation": GenerationParams(temperature=0)}))
        limited = engine_for(base.model_copy(update={"requests_per_minute": 60}))
        assert greedy is first
        assert limited is not first
    finally:
        engines.close_engines()
    assert engine_for(base) is not first  # closed engines are forgotten
    engines.close_engines()


def test_api_base_adds_v1_unless_a_version_is_given() -> None:
    assert api_base("http://h:1") == "http://h:1/v1"
    assert api_base("https://api.deepseek.com/v1/") == "https://api.deepseek.com/v1"
    assert api_base("http://h/openai/v2") == "http://h/openai/v2"
