"""Health commands for containers and orchestrators, without the ``vr1`` CLI's imports.

``python -m shared.healthcheck worker``        the broker and the database answer
``python -m shared.healthcheck http URL``      an HTTP endpoint answers 2xx/3xx
``python -m shared.healthcheck wait-db``       block until the database accepts connections

Exit status 0 means healthy, 1 unhealthy, 2 bad usage.  ``worker`` and ``wait-db`` demand an
explicit ``VR1_DATABASE_URL``: a deployed process never falls back to the embedded SQLite
file.  Only the standard library, SQLAlchemy and redis are imported, so a check costs little
and works in the slim ``api`` image (which has no curl).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from shared.settings import BaseVR1Settings

OK = 0
UNHEALTHY = 1


def check_database(url: str, timeout_s: float = 5.0) -> str | None:
    """None when ``SELECT 1`` succeeds on ``url``, else why it did not."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, object] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = max(1, int(timeout_s))
    # NullPool: one check, one socket, nothing left open afterwards.
    engine = create_engine(url, connect_args=connect_args, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database: {_first_line(exc)}"
    finally:
        engine.dispose()
    return None


def check_redis(url: str, timeout_s: float = 5.0) -> str | None:
    """None when Redis at ``url`` answers PING, else why it did not."""
    import redis

    if not url:
        return "broker: VR1_REDIS_URL is not set"
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"broker: {_first_line(exc)}"
    finally:
        client.close()
    return None


def check_http(url: str, timeout_s: float = 5.0) -> str | None:
    """None when a GET on ``url`` answers with a 2xx or 3xx status, else why not."""
    if not url.startswith(("http://", "https://")):
        return f"http: not an http(s) URL: {url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"http: {url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"http: {url}: {_first_line(exc)}"
    return None if status < 400 else f"http: {url} answered {status}"


def wait_for_database(url: str, timeout_s: float = 60.0, interval_s: float = 1.0) -> str | None:
    """Retry the database check until it passes or ``timeout_s`` is spent; last error or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        error = check_database(url, timeout_s=min(5.0, max(1.0, timeout_s)))
        if error is None or time.monotonic() + interval_s > deadline:
            return error
        time.sleep(interval_s)


def _configured(settings: BaseVR1Settings) -> str | None:
    # Deployed processes share one database; an unset URL would mean a private SQLite file.
    return None if settings.database_url else "database: VR1_DATABASE_URL is not set"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.healthcheck", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="the broker and the database answer")
    worker.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    http = commands.add_parser("http", help="an HTTP endpoint answers 2xx/3xx")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=5.0, help="seconds")
    wait = commands.add_parser("wait-db", help="wait until the database accepts connections")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds to wait in all")
    wait.add_argument("--interval", type=float, default=1.0, help="seconds between tries")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Run one check; returns the exit status."""
    args = _parser().parse_args(argv)
    errors: list[str | None]
    if args.command == "http":
        errors = [check_http(args.url, args.timeout)]
    elif args.command == "worker":
        settings = BaseVR1Settings()
        errors = [
            check_redis(settings.redis_url, args.timeout),
            _configured(settings) or check_database(settings.database_url, args.timeout),
        ]
    else:
        settings = BaseVR1Settings()
        errors = [
            _configured(settings)
            or wait_for_database(settings.database_url, args.timeout, args.interval)
        ]
    failures = [error for error in errors if error is not None]
    for failure in failures:
        print(failure, file=sys.stderr)  # noqa: T201
    return UNHEALTHY if failures else OK


if __name__ == "__main__":
    sys.exit(run())
