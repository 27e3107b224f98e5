"""Embedded mode: every service's task handlers wired in one process, SQLite, a local folder.

What a cluster puts on Redis goes to the database's outbox instead, written in the same
transaction as the state that needs it; :meth:`Embedded.drain` relays it to the handlers
the services declare for their workers (``services/<name>/worker.py: tasks``), so a job
behaves the same in both modes.  Training runs in a local process, in the foreground,
writing to its attempt's log file (to this terminal when verbose); the run writes its own
result and tells its pipeline through the same outbox, and a watcher pass after each quiet
spell relaunches a run that died, as the trainer worker's watcher does in a cluster.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.captioner import worker as captioner
from services.reasoner import worker as reasoner
from services.trainer import watcher
from services.trainer import worker as trainer
from services.trainer.launcher import LocalLauncher
from services.trainer.settings import TrainerSettings
from shared import jobs, teams
from shared.contracts.specs import JobSpec
from shared.db import migrate
from shared.db.models import Job, Team
from shared.db.session import Database, take_outbox
from shared.errors import NotAvailable, TeamNotFound
from shared.settings import BaseVR1Settings
from shared.storage import ArtifactStore, open_store
from shared.worker import Tasks

if TYPE_CHECKING:
    from entrypoints.console import Console

log = logging.getLogger(__name__)
LOCAL_TEAM = "local"
MessageHook = Callable[[str, list[Any]], None]


@dataclass
class Embedded:
    """A database, a store, and the services' handlers behind one in-process relay."""

    settings: BaseVR1Settings
    db: Database
    store: ArtifactStore
    tasks: Tasks
    watch: Callable[[], list[str]]  # one watcher pass; the IDs of relaunched jobs
    on_message: MessageHook | None = None

    def team(self) -> Team:
        """The local team that embedded runs belong to (created on first use)."""
        with self.db.session() as session:
            try:
                return teams.get_team(session, name=LOCAL_TEAM)
            except TeamNotFound:
                return teams.create_team(session, name=LOCAL_TEAM)

    def submit(self, spec: JobSpec, *, name: str | None = None) -> uuid.UUID:
        """Create a job as the API would (its messages are written with it)."""
        team = self.team()
        with self.db.session() as session:
            job = jobs.create_job(session, team=team, spec=spec, name=name)
            return job.id

    def run(self, spec: JobSpec, *, name: str | None = None) -> Job:
        """Submit a job and work the outbox dry; returns the finished job."""
        job_id = self.submit(spec, name=name)
        self.drain()
        with self.db.session() as session:
            return jobs.get_job(session, team=None, job_id=job_id)

    def drain(self, stop: threading.Event | None = None) -> int:
        """Hand every outbox message (and those they send) to its handler, in order, until
        none is left and no training run needs relaunching (or ``stop`` is set); returns
        how many were handled."""
        handled = 0
        while stop is None or not stop.is_set():
            with self.db.session() as session:
                messages = take_outbox(session, limit=1)
            if not messages and not self.watch():
                return handled
            for task_name, args in messages:
                self._handle(task_name, args)
                handled += 1
        return handled

    def _handle(self, task_name: str, args: list[Any]) -> None:
        handler = self.tasks.get(task_name)
        if handler is None:
            raise NotAvailable(f"no handler for task {task_name} in embedded mode")
        handler(*args)
        if self.on_message is not None:
            self.on_message(task_name, args)


def embedded(settings: BaseVR1Settings | None = None, *, verbose: bool = False) -> Embedded:
    """Embedded mode on the given (or default) settings, database migrated; ``verbose``
    training runs write to this process's terminal instead of their log files."""
    settings = settings or BaseVR1Settings()
    url = settings.resolved_database_url
    migrate.upgrade(url)
    db = Database(url)  # no broker: messages go to the outbox
    store = open_store(settings.resolved_artifact_uri)
    training = TrainerSettings(
        home=settings.home,
        database_url=url,
        artifact_uri=settings.resolved_artifact_uri,
        redis_url="",  # the run writes its messages to the outbox too
    )
    launcher = LocalLauncher(foreground=True, terminal=verbose)
    tasks = {
        **captioner.tasks(db),
        **reasoner.tasks(db, store),
        **trainer.tasks(db, launcher, training),
    }
    return Embedded(settings, db, store, tasks, lambda: watcher.watch_once(db, launcher, training))


def run_shown(
    platform: Embedded, console: Console, spec: JobSpec, *, name: str | None = None, title: str = ""
) -> Job:
    """:meth:`Embedded.run` with the job's progress on ``console``; returns the finished job."""
    job_id = platform.submit(spec, name=name)
    with console.job(platform.db, platform.store, job_id, title or name or spec.kind) as follower:
        platform.drain()
        return follower.finish()
