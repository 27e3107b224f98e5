"""What every queue worker shares: settings fields, the Celery app, the task table, the run loop.

Each service declares its task handlers once, as a table from task name to function
(``services/<name>/worker.py: tasks(...)``); the Celery worker registers that table and
the embedded runner calls the same functions in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Celery
from pydantic import Field

from shared.db.session import Database
from shared.errors import InvalidInput
from shared.queue import CeleryDispatcher, make_celery
from shared.settings import BaseVR1Settings
from shared.storage import ArtifactStore, open_store

Handler = Callable[..., None]
Tasks = Mapping[str, Handler]


class WorkerSettings(BaseVR1Settings):
    """A queue worker process."""

    concurrency: int = Field(default=1, ge=1, description="Tasks run at once in this process.")
    visibility_timeout_s: int = Field(default=1800, ge=5)
    keepalive_s: float = Field(
        default=15.0, gt=0, description="How often a chunk at work touches its records."
    )
    worker_name: str = ""


def build(settings: WorkerSettings, name: str) -> tuple[Celery, Database, ArtifactStore]:
    """The Celery app, the database (sending after commit through Celery), the store."""
    if not settings.redis_url:
        raise InvalidInput("a queue worker needs a broker: set VR1_REDIS_URL")
    logging.basicConfig(level=settings.log_level)
    app = make_celery(
        settings.redis_url, name=name, visibility_timeout_s=settings.visibility_timeout_s
    )
    db = Database(settings.resolved_database_url, CeleryDispatcher(app))
    return app, db, open_store(settings.resolved_artifact_uri)


# Errors of the infrastructure, not of the work: the database or the broker is away for a
# moment.  A task failing with one is sent again with growing delays (1 s, 2 s, 4 s, … up
# to a minute, about ten minutes in all) instead of being acknowledged and dropped; an
# item's own errors never get here (the item is failed with its reason, the chunk goes on).
TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "max_retries": 14,
}


def register(app: Celery, tasks: Tasks) -> None:
    """Bind a service's task table to a Celery app, each handler under its task name,
    retried on transient infrastructure errors."""
    for name, handler in tasks.items():
        app.task(name=name, **RETRY)(handler)


def run(app: Celery, queue: str, settings: WorkerSettings) -> None:
    """Consume one queue; threads share the loaded models, one task per thread at a time."""
    pool = "solo" if settings.concurrency == 1 else "threads"
    hostname = settings.worker_name or f"{queue}@%h"
    app.worker_main(
        [
            "worker",
            f"--queues={queue}",
            f"--pool={pool}",
            f"--concurrency={settings.concurrency}",
            f"--hostname={hostname}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
