"""Shared test fixtures: real PostgreSQL and Redis for the integration tier.

The integration tier never skips silently: when a server is down, the tests that need it
fail with the command that starts it.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get(
    "VR1_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("VR1_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
# The vLLM tier runs in its own environment (`make test-vllm`); elsewhere it is not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]
START_PG = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"


def _fresh_database() -> Iterator[str]:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"vr1_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); start it: {START_PG}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards."""
    yield from _fresh_database()


@pytest.fixture(scope="module")
def pg_module() -> Iterator[str]:
    """A PostgreSQL database built by the migrations, shared by a module's tests."""
    from shared.db.migrate import upgrade

    for url in _fresh_database():
        upgrade(url)
        yield url


@pytest.fixture
def pg_migrated(pg_url: str) -> str:
    """A fresh PostgreSQL database built by the migrations."""
    from shared.db.migrate import upgrade

    upgrade(pg_url)
    return pg_url


@pytest.fixture
def redis_url() -> str:
    """A Redis database emptied for the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it: {START_REDIS}")
    return REDIS_URL


@pytest.fixture(scope="session")
def teachers() -> dict[str, Path]:
    """Stand-in teachers trained once per cache key (kept under .vr1/test-cache)."""
    from pathlib import Path

    from tests.helpers import stand_in_teachers

    cache = Path(
        os.environ.get("VR1_TEST_CACHE", Path(__file__).parents[1] / ".vr1" / "test-cache")
    )
    return stand_in_teachers(cache)
