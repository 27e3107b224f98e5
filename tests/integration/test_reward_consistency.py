"""One rule, one verdict, whichever way a reward is asked for: the reward service over HTTP,
the in-process TRL reward function, and ``vr1 reward score`` give the same reward and
reason on every answer convention and on the pathological batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from services.reward.app import create_app
from services.reward.settings import RewardSettings
from shared.rewards import ScoreItem, reward_fn
from tests.helpers import REPO, serve_app
from tests.unit.test_reward_conventions import (
    CONTROL,
    DECIMALS_AND_FRACTIONS,
    OPTION_LETTERS,
    PATHOLOGICAL,
    PERCENTAGES,
    PREFIXES,
    THOUSANDS,
    WITHOUT_SYMPY,
    completion,
)

pytestmark = pytest.mark.integration
RULES = {
    "option letters": OPTION_LETTERS,
    "prefixes": PREFIXES,
    "thousands": THOUSANDS,
    "decimals and fractions": DECIMALS_AND_FRACTIONS,
    "percentages": PERCENTAGES,
    "control characters": CONTROL,
    "trig, logs and sets": WITHOUT_SYMPY,
}
LIMITS = {
    "max_completion_chars": 200_000,
    "max_body_bytes": 8_000_000,
    "item_timeout_s": 3.0,
}


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with serve_app(create_app(RewardSettings(workers=1, **LIMITS))) as base:
        yield base


def _three_ways(base: str, items: list[ScoreItem]) -> dict[str, list[tuple[float | None, str]]]:
    """Rewards and reasons from each way (the TRL form gives rewards only), and how long
    the HTTP request took."""
    body = {"reward": "hfrrf", "items": [{"completion": i.completion, "answer": i.answer}
                                         for i in items]}  # fmt: skip
    started = time.monotonic()
    answer = httpx.post(f"{base}/v1/score", json=body, timeout=120)
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    http = list(zip(answer.json()["rewards"], [d["reason"] for d in answer.json()["details"]],
                    strict=True))  # fmt: skip
    trl = reward_fn("hfrrf")([i.completion for i in items], answer=[i.answer for i in items])
    env = {**os.environ, "PYTHONPATH": str(REPO), "VR1_WORKERS": "1"}
    env |= {f"VR1_{k.upper()}": str(v) for k, v in LIMITS.items()}
    lines = "".join(json.dumps({"completion": i.completion, "answer": i.answer}) + "\n"
                    for i in items)  # fmt: skip
    cli = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "reward", "score", "--reward", "hfrrf"],
        input=lines,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    rows = [json.loads(line) for line in cli.stdout.splitlines()]
    return {
        "seconds": [(took, "")],
        "http": http,
        "trl": [(r, "") for r in trl],
        "cli": [(r["reward"], r["reason"]) for r in rows],
    }


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_gives_one_verdict_three_ways(service: str, rule: str) -> None:
    cases = RULES[rule]
    items = [ScoreItem(completion(pred), gold) for gold, pred, _, _ in cases]
    expected = [(None if ok is None else float(ok), reason) for _, _, ok, reason in cases]
    ways = _three_ways(service, items)
    assert ways["http"] == expected
    assert ways["cli"] == expected
    assert [reward for reward, _ in ways["trl"]] == [reward for reward, _ in expected]


def test_the_pathological_batch_gives_one_verdict_three_ways(service: str) -> None:
    items = [item for item, _, _ in PATHOLOGICAL]
    ways = _three_ways(service, items)
    rewards = [reward for _, reward, _ in PATHOLOGICAL]
    assert [r for r, _ in ways["http"]] == [r for r, _ in ways["cli"]] == rewards
    assert [r for r, _ in ways["trl"]] == rewards
    assert [why for _, why in ways["http"]] == [why for _, why in ways["cli"]]
    # Two items run into the per-item limit (3 s); the batch is bounded by them.
    ((seconds, _),) = ways["seconds"]
    assert seconds is not None
    assert seconds < 20
    health = httpx.get(f"{service}/healthz").json()
    assert health["status"] == "ok"  # the service stayed up
