"""What every queue worker shares: settings fields, the Celery app, the task table, the run loop.

Each service declares its task handlers once, as a table from task name to function
(``services/<name>/worker.py: tasks(...)``); the Celery worker registers that table and
the embedded runner calls the same functions in-process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Celery, Task
from celery.signals import task_prerun, task_retry
from pydantic import Field

from shared import events
from shared.db.session import Database
from shared.errors import InvalidInput
from shared.events import EventType
from shared.queue import CeleryDispatcher, make_celery
from shared.settings import BaseVR1Settings
from shared.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)
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
    RetryLog(app, db).connect()
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


WAITING_MAX = 1000  # retry events a process keeps while the database is away


class RetryLog:
    """Puts Celery's retries of ``app``'s tasks (after a transient error) in their jobs'
    logs.  A retry is logged where Celery decides it; when the database is what is away,
    the event waits in this process and is written when the retried task starts here."""

    def __init__(self, app: Celery, db: Database) -> None:
        self.app, self.db = app, db
        self.waiting: dict[str, tuple[uuid.UUID, str, dict[str, Any]]] = {}  # by task ID

    def connect(self) -> None:
        """Listen to Celery's signals (for the life of the process)."""
        task_retry.connect(self.on_retry, weak=False)
        task_prerun.connect(self.on_prerun, weak=False)

    def on_retry(
        self, sender: Task | None = None, request: Any = None, reason: Any = None, **_: Any
    ) -> None:
        """``task_retry``: the task will run again; say so, with the error."""
        if sender is None or sender.app is not self.app or request is None or not request.args:
            return
        try:
            job_id = uuid.UUID(str(request.args[0]))
        except ValueError:
            return  # not a job's task
        retry = int(request.retries) + 1
        cause = getattr(reason, "exc", None) or reason  # Celery's Retry wraps the error
        first_line = next(iter(str(cause).splitlines()), "")
        error = f"{type(cause).__name__}: {first_line}"[:300]
        message = f"{sender.name} retried (retry {retry} of {RETRY['max_retries']}) after {error}"
        event = (job_id, message, {"task": sender.name, "retry": retry, "error": error})
        if not self._write(*event):
            self.waiting[request.id] = event
            if len(self.waiting) > WAITING_MAX:  # retried elsewhere, most likely: let go
                self.waiting.pop(next(iter(self.waiting)))

    def on_prerun(self, task_id: str | None = None, **_: Any) -> None:
        """``task_prerun``: a retried task starts; its retry event is written if it waited."""
        event = self.waiting.pop(task_id or "", None)
        if event is not None:
            self._write(*event)

    def _write(self, job_id: uuid.UUID, message: str, data: dict[str, Any]) -> bool:
        try:
            with self.db.session() as session:
                events.record(session, job_id, EventType.RETRIED, message, level="warning", **data)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # away, or the job is gone
            log.warning("could not log a retry of job %s: %s", job_id, exc)
            return False
        return True


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
