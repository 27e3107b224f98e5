"""The container health commands: exit 0 when the dependency answers, 1 when it does not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared import healthcheck

# Port 9 (discard) is never served on loopback here: a connection is refused at once.
CLOSED_PG = "postgresql+psycopg://vr1@127.0.0.1:9/vr1"
CLOSED_REDIS = "redis://127.0.0.1:9/0"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'health.db'}"


def test_http_healthy_and_unhealthy(http_base: str) -> None:
    assert healthcheck.run(["http", f"{http_base}/healthz"]) == 0
    assert healthcheck.check_http(f"{http_base}/down") == f"http: {http_base}/down answered 503"
    assert healthcheck.run(["http", f"{http_base}/down"]) == 1


def test_http_refused_and_bad_url() -> None:
    assert healthcheck.run(["http", "http://127.0.0.1:9/healthz", "--timeout", "1"]) == 1
    assert healthcheck.check_http("ftp://example/x") == "http: not an http(s) URL: ftp://example/x"


def test_database_check(sqlite_url: str) -> None:
    assert healthcheck.check_database(sqlite_url) is None
    error = healthcheck.check_database(CLOSED_PG, timeout_s=1)
    assert error is not None
    assert error.startswith("database: ")


def test_wait_db_passes_at_once_and_times_out(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VR1_DATABASE_URL", sqlite_url)
    assert healthcheck.run(["wait-db", "--timeout", "5"]) == 0
    monkeypatch.setenv("VR1_DATABASE_URL", CLOSED_PG)
    assert healthcheck.run(["wait-db", "--timeout", "1", "--interval", "0.2"]) == 1


def test_deployed_checks_refuse_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VR1_DATABASE_URL", "")
    assert healthcheck.run(["wait-db", "--timeout", "1"]) == 1
    assert "VR1_DATABASE_URL is not set" in capsys.readouterr().err


def test_worker_needs_broker_and_database(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VR1_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("VR1_REDIS_URL", "")
    assert healthcheck.run(["worker"]) == 1
    assert "VR1_REDIS_URL is not set" in capsys.readouterr().err
    monkeypatch.setenv("VR1_REDIS_URL", CLOSED_REDIS)
    assert healthcheck.run(["worker", "--timeout", "1"]) == 1
    assert capsys.readouterr().err.startswith("broker: ")


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        healthcheck.run(["nonsense"])
    assert exc.value.code == 2
