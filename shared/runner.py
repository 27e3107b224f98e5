"""Embedded mode: the same tasks, run in-process, with SQLite and a local folder.

Messages that a cluster would put on Redis go to an in-process queue instead and are
handled by the very functions the workers call, so a job behaves the same in both modes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import jobs, teams
from shared.contracts import queues
from shared.contracts.specs import JobSpec
from shared.db import migrate
from shared.db.models import Job, Team
from shared.db.session import Database
from shared.errors import NotAvailable, TeamNotFound
from shared.settings import BaseVR1Settings
from shared.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)
LOCAL_TEAM = "local"
Handler = Callable[..., None]


@dataclass
class InlineDispatcher:
    """Queues messages in memory; ``drain`` hands them to their handlers in order."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    pending: deque[tuple[str, list[Any]]] = field(default_factory=deque)
    on_message: Callable[[str, list[Any]], None] | None = None

    def send(self, task_name: str, args: list[Any]) -> None:
        self.pending.append((task_name, args))

    def drain(self) -> int:
        """Run every queued message (and those they send) to exhaustion."""
        handled = 0
        while self.pending:
            task_name, args = self.pending.popleft()
            handler = self.handlers.get(task_name)
            if handler is None:
                raise NotAvailable(f"no handler for task {task_name} in embedded mode")
            handler(*args)
            handled += 1
            if self.on_message:
                self.on_message(task_name, args)
        return handled


@dataclass
class Embedded:
    """A database, a store and an in-process dispatcher wired to the service functions."""

    settings: BaseVR1Settings
    db: Database
    store: ArtifactStore
    dispatcher: InlineDispatcher

    def team(self) -> Team:
        """The local team that embedded runs belong to (created on first use)."""
        with self.db.session() as session:
            try:
                return teams.get_team(session, name=LOCAL_TEAM)
            except TeamNotFound:
                return teams.create_team(session, name=LOCAL_TEAM)

    def submit(self, spec: JobSpec, *, name: str | None = None) -> uuid.UUID:
        """Create a job as the API would (messages leave after commit)."""
        team = self.team()
        with self.db.session() as session:
            job = jobs.create_job(session, team=team, spec=spec, name=name)
            return job.id

    def run(self, spec: JobSpec, *, name: str | None = None) -> Job:
        """Submit a job and work its queue dry; returns the finished job."""
        job_id = self.submit(spec, name=name)
        self.dispatcher.drain()
        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job


def _default_handlers(db: Database, store: ArtifactStore) -> dict[str, Handler]:
    """The service functions behind each task name, imported when first called."""

    def caption(job_id: str, item_ids: list[str]) -> None:
        from services.captioner.captioning import caption_chunk

        caption_chunk(db, job_id, item_ids)

    def reason(job_id: str, item_ids: list[str]) -> None:
        from services.reasoner.reasoning import reason_chunk

        reason_chunk(db, store, job_id, item_ids)

    def advance(parent_id: str) -> None:
        from shared.pipeline import advance as advance_pipeline

        with db.session() as session:
            advance_pipeline(session, parent_id)

    return {
        queues.CAPTION_BATCH: caption,
        queues.REASON_BATCH: reason,
        queues.JOB_ADVANCE: advance,
    }


def _train_handler(
    settings: BaseVR1Settings, db: Database, dispatcher: InlineDispatcher
) -> Handler:
    """Training runs in its own local process; the caller waits for it to end."""

    def train(job_id: str) -> None:
        from services.trainer.launcher import run_command
        from services.trainer.settings import TrainerSettings
        from services.trainer.watcher import settings_env

        trainer = TrainerSettings(
            home=settings.home,
            database_url=settings.resolved_database_url,
            artifact_uri=settings.resolved_artifact_uri,
        )
        env = {**os.environ, **settings_env(trainer), "VR1_REDIS_URL": ""}
        subprocess.run(run_command(job_id), env=env, check=False)
        with db.session() as session:
            job = session.get(Job, uuid.UUID(job_id))
            if job is not None and job.status in ("queued", "running"):
                job.status, job.error = "failed", "the training process ended without a result"
            if job is not None and job.parent_id is not None:
                dispatcher.send(queues.JOB_ADVANCE, [str(job.parent_id)])

    return train


def embedded(settings: BaseVR1Settings | None = None) -> Embedded:
    """Embedded mode on the given (or default) settings, database migrated."""
    settings = settings or BaseVR1Settings()
    url = settings.resolved_database_url
    migrate.upgrade(url)
    dispatcher = InlineDispatcher()
    db = Database(url, dispatcher)
    store = open_store(settings.resolved_artifact_uri)
    dispatcher.handlers.update(_default_handlers(db, store))
    dispatcher.handlers[queues.TRAIN_LAUNCH] = _train_handler(settings, db, dispatcher)
    return Embedded(settings, db, store, dispatcher)


def print_progress(platform: Embedded) -> Callable[[str, list[Any]], None]:
    """A message hook that prints each job's progress after every handled message."""

    def show(task_name: str, args: list[Any]) -> None:
        with platform.db.session() as session:
            job = session.get(Job, uuid.UUID(str(args[0])))
            if job is None:
                return
            done = job.items_done + job.items_failed
            sys.stderr.write(
                f"[{job.kind} {str(job.id)[:8]}] {task_name}: {job.status}, "
                f"{done}/{job.items_total} items settled ({job.items_failed} failed)\n"
            )

    return show
