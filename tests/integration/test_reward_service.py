"""The reward service over real HTTP: scoring, limits, and isolation of pathological items."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from services.reward.app import create_app
from services.reward.settings import RewardSettings
from shared.errors import InvalidInput, PayloadTooLarge
from shared.reward_client import RewardClient, as_trl_reward
from tests.helpers import serve_app

pytestmark = pytest.mark.integration

LIMIT_S = 2.0
GOOD = "<think>6/2 = 3</think><answer>3</answer>"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    settings = RewardSettings(
        workers=2,
        item_timeout_s=LIMIT_S,
        max_batch_items=64,
        max_completion_chars=20_000,
        max_body_bytes=2_000_000,
        log_level="warning",
    )
    with serve_app(create_app(settings)) as base:
        yield base


def post(base_url: str, body: object) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/score", json=body, timeout=30)


def test_health_and_reward_list(base_url: str) -> None:
    health = httpx.get(f"{base_url}/healthz").json()
    assert health == {"status": "ok", "workers": 2, "workers_alive": 2}
    rewards = httpx.get(f"{base_url}/v1/rewards").json()["rewards"]
    assert {r["name"] for r in rewards} == {"hfrrf", "format", "accuracy"}
    assert [r["name"] for r in rewards if r["default"]] == ["hfrrf"]


def test_score_batch(base_url: str) -> None:
    items = [
        {"completion": GOOD, "answer": "3"},
        {"completion": "<think>x</think><answer>2\\sqrt{3}</answer>", "answer": "\\sqrt{12}"},
        {"completion": "<think>x</think><answer>(B)</answer>", "answer": "C"},
        {"completion": GOOD + " trailing", "answer": "3"},
        {"completion": GOOD, "answer": ""},
    ]
    body = post(base_url, {"reward": "hfrrf", "items": items}).json()
    assert body["rewards"] == [1.0, 1.0, 0.0, 0.0, None]
    reasons = [d["reason"] for d in body["details"]]
    assert reasons == ["ok", "ok", "other_option_letter", "format:text_outside", "gold_empty"]
    assert body["details"][1] == {
        "format_ok": True,
        "answer_ok": True,
        "extracted": "2\\sqrt{3}",
        "reason": "ok",
    }


def test_default_reward_is_hfrrf(base_url: str) -> None:
    body = post(base_url, {"items": [{"completion": "3", "answer": "3"}]}).json()
    assert body["rewards"] == [0.0]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"items": [{"completion": "x", "answer": "1"}] * 65}, 413, "batch_too_large"),
        ({"items": [{"completion": "x" * 20_001, "answer": "1"}]}, 413, "completion_too_long"),
        ({"reward": "nope", "items": []}, 422, "unknown_reward"),
        ({"reward": "hfrrf"}, 422, "invalid_input"),
        ({"items": [{"completion": 5, "answer": "1"}]}, 422, "invalid_input"),
        ({"items": [{"answer": "1"}]}, 422, "invalid_input"),
        ({"items": [], "extra": 1}, 422, "invalid_input"),
    ],
)
def test_limits_and_bad_requests(base_url: str, body: object, status: int, code: str) -> None:
    response = post(base_url, body)
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert response.json()["message"]


def test_malformed_json_and_oversized_body(base_url: str) -> None:
    bad = httpx.post(f"{base_url}/v1/score", content=b'{"items": [', timeout=10)
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_input")
    huge = httpx.post(f"{base_url}/v1/score", content=b" " * 2_000_001, timeout=10)
    assert (huge.status_code, huge.json()["error"]) == (413, "payload_too_large")


def test_client_and_remote_trl_reward(base_url: str) -> None:
    with RewardClient(base_url) as client:
        assert "hfrrf" in client.rewards()
        results = client.score("hfrrf", [[{"role": "assistant", "content": GOOD}]], [3])
        assert (results[0].reward, results[0].reason) == (1.0, "ok")
        with pytest.raises(PayloadTooLarge):
            client.score("hfrrf", ["x"] * 65, ["1"] * 65)
        with pytest.raises(InvalidInput):
            client.score("nope", ["x"], ["1"])
    f = as_trl_reward("accuracy", base_url=base_url)
    assert f(["<answer>4</answer>", "5"], answer=["4", "4"]) == [1.0, 0.0]


def normal_batch(k: int) -> dict[str, object]:
    """32 items: numbers, letters, words, and symbolic answers unique to this batch."""
    items = []
    for i in range(32):
        n = 1000 * k + i
        gold, pred = [
            (str(n), f"{n}"),
            ("B", "(B)"),
            ("red", "Red"),
            (f"{n}\\sqrt{{2}}", f"\\sqrt{{{2 * n * n}}}"),
        ][i % 4]
        items.append({"completion": f"<think>t</think><answer>{pred}</answer>", "answer": gold})
    return {"reward": "hfrrf", "items": items}


def batch_latencies(
    base_url: str, first: int, count: int, while_alive: threading.Thread | None = None
) -> list[float]:
    """Latencies of ``count`` normal batches, or of as many as fit while a thread runs."""
    latencies = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for k in range(first, first + count):
            if while_alive is not None and not while_alive.is_alive():
                break
            start = time.monotonic()
            body = http.post("/v1/score", json=normal_batch(k)).json()
            latencies.append(time.monotonic() - start)
            assert body["rewards"] == [1.0] * 32
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_pathological_request_does_not_block_normal_batches(base_url: str) -> None:
    batch_latencies(base_url, 900, 5)  # warm the workers and the connection
    baseline = batch_latencies(base_url, 1, 40)
    tower = "<think>t</think><answer>10^{10^{10^{10}}}</answer>"
    result: dict[str, object] = {}

    def stuck() -> None:
        result["body"] = post(base_url, {"items": [{"completion": tower, "answer": "1"}]}).json()

    thread = threading.Thread(target=stuck)
    thread.start()
    time.sleep(0.1)
    during = batch_latencies(base_url, 100, 1000, while_alive=thread)
    thread.join()
    print(f"p99 alone {p99(baseline):.3f}s, beside a stuck item {p99(during):.3f}s")
    assert len(during) >= 10
    body = result["body"]
    assert isinstance(body, dict)
    assert (body["rewards"], body["details"][0]["reason"]) == ([0.0], "timeout")
    assert p99(during) < 3 * p99(baseline) + 1.0, (p99(baseline), p99(during))
    health = httpx.get(f"{base_url}/healthz").json()
    assert health["workers_alive"] == 2


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{wanted}}}" if wanted else name):
            return float(value)
    return 0.0


def test_metrics_count_items_by_reason_and_verifier_failures(base_url: str) -> None:
    before = httpx.get(f"{base_url}/metrics").text
    items = [
        {"completion": GOOD, "answer": "3"},
        {"completion": GOOD, "answer": "3"},
        {"completion": "<think>x</think><answer>3^{3^{3^{3^{3^{3}}}}}</answer>", "answer": "7"},
    ]
    post(base_url, {"reward": "hfrrf", "items": items})
    response = httpx.get(f"{base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    ok = {"reward": "hfrrf", "reason": "ok"}
    assert (
        _metric(after, "vr1_reward_items_total", **ok)
        == _metric(before, "vr1_reward_items_total", **ok) + 2
    )
    timeouts = {"reason": "timeout"}
    assert (
        _metric(after, "vr1_reward_verifier_failures_total", **timeouts)
        == _metric(before, "vr1_reward_verifier_failures_total", **timeouts) + 1
    )
    assert _metric(after, "vr1_reward_verifier_workers_alive") == 2
    assert 'vr1_reward_verifier_failures_total{reason="verifier_error"}' in after
