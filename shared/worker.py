"""What every queue worker shares: settings fields, the Celery app, the task table, the run loop.

Each service declares its task handlers once, as a table from task name to function
(``services/<name>/worker.py: tasks(...)``); the Celery worker registers that table and
the embedded runner calls the same functions in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

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


def register(app: Celery, tasks: Tasks) -> None:
    """Bind a service's task table to a Celery app, each handler under its task name."""
    for name, handler in tasks.items():
        app.task(name=name)(handler)


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
