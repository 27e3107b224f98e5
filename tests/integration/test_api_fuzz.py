"""The APIs fuzzed from their own OpenAPI documents (schemathesis, every check): no answer
of 500 or above, and every answer as the document says — status codes, content types,
headers, bodies.  Requests go over HTTP to real servers: the gateway on a real PostgreSQL
with a team and a dataset in it, the reward service with its real verifier pool."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.reward.app import create_app as create_reward_app
from services.reward.settings import RewardSettings
from shared import teams
from tests.helpers import serve_app

pytestmark = pytest.mark.integration
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same requests on every run: a failure is reproducible
    suppress_health_check=list(HealthCheck),
)
# Every check but one heuristic: that a schema-valid request is accepted.  Some are
# refused for what only the database knows (a file that is not there, a dataset ID no
# one has) with a documented 4xx and a message; that is the contract, not a violation.
HEURISTIC = [positive_data_acceptance]
# Answers by service and status class, printed once the module is done.
ANSWERS: Counter[tuple[str, str]] = Counter()
# The documents as the services publish them (building an app connects to nothing).
gateway = schemathesis.openapi.from_dict(create_app(GatewaySettings()).openapi())
reward = schemathesis.openapi.from_dict(create_reward_app(RewardSettings()).openapi())


@pytest.fixture(scope="module", autouse=True)
def tally() -> Iterator[None]:
    yield
    for service in ("gateway", "reward"):
        counts = {k[1]: n for k, n in sorted(ANSWERS.items()) if k[0] == service}
        print(f"\nfuzzed {service}: {sum(counts.values())} requests, answers {counts}")


@pytest.fixture(scope="module")
def live_gateway(pg_module: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The gateway's URL and a team's API key."""
    root = tmp_path_factory.mktemp("gateway")
    data = root / "data"
    data.mkdir()
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(3)]
    (data / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = GatewaySettings(
        database_url=pg_module, artifact_uri=(root / "artifacts").as_uri(), import_roots=[data]
    )
    app = create_app(settings)
    with app.state.context.db.session() as session:
        team = teams.create_team(session, name="fuzz")
        key = teams.create_key(session, team=team).secret
    with serve_app(app) as base:
        yield base, key


@pytest.fixture(scope="module")
def live_reward() -> Iterator[str]:
    with serve_app(create_reward_app(RewardSettings(workers=1))) as base:
        yield base


@gateway.parametrize()
@FUZZ
def test_gateway_answers_every_request_as_documented(case: Any, live_gateway: Any) -> None:
    base, key = live_gateway
    response = case.call_and_validate(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, excluded_checks=HEURISTIC
    )
    ANSWERS["gateway", f"{response.status_code // 100}xx"] += 1


@reward.parametrize()
@FUZZ
def test_reward_service_answers_every_request_as_documented(case: Any, live_reward: str) -> None:
    response = case.call_and_validate(base_url=live_reward, excluded_checks=HEURISTIC)
    ANSWERS["reward", f"{response.status_code // 100}xx"] += 1
