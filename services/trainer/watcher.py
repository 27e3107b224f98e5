"""Launching runs and watching them: a silent run is relaunched, a cancelled one stopped.

A run proves it is alive by its heartbeat.  When the heartbeat is older than
``stale_after_s``, the watcher asks the launcher; whatever the answer, the old attempt
is stopped and a new one launched (it resumes from the last checkpoint of its current
stage), until ``max_launches`` is reached and the job fails with the reason.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from services.trainer.launcher import (
    Launcher,
    LaunchRefused,
    LaunchRequest,
    RunState,
    run_command,
)
from services.trainer.settings import TrainerSettings
from shared import events
from shared.contracts.specs import parse_spec
from shared.contracts.status import JOB_ACTIVE, JobStatus, RunStatus
from shared.db.models import Job, Run, as_utc, utcnow
from shared.db.session import Database
from shared.events import EventType
from shared.jobs import finish_job, is_active
from shared.storage import open_store

log = logging.getLogger(__name__)
TRAINING_KINDS = ("sft", "grpo", "eval")


def settings_env(settings: TrainerSettings) -> dict[str, str]:
    """The environment a run needs to reach the same database, store and broker."""
    env = {
        "VR1_HOME": str(settings.home.resolve()),
        "VR1_DATABASE_URL": settings.resolved_database_url,
        "VR1_ARTIFACT_URI": settings.resolved_artifact_uri,
        "VR1_REDIS_URL": settings.redis_url,
        "VR1_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "VR1_CHECKPOINT_EVERY": str(settings.checkpoint_every),
    }
    if settings.torch_threads:
        env["VR1_TORCH_THREADS"] = str(settings.torch_threads)
    return env


def launch(
    db: Database,
    launcher: Launcher,
    settings: TrainerSettings,
    job_id: str,
    *,
    reason: str | None = None,
) -> str | None:
    """Start a new attempt of a training job; None when there is nothing to run.  A later
    attempt is logged as a relaunch, with ``reason`` (why the last one was lost)."""
    with db.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        if job is None or not is_active(job):
            return None
        attempts = session.scalar(select(func.count()).where(Run.job_id == job.id)) or 0
        if attempts >= settings.max_launches:
            error = f"the run was lost {attempts} times; gave up"
            finish_job(session, job, JobStatus.FAILED, error=error)
            return None
        run = Run(
            job_id=job.id, attempt=attempts + 1, launcher=launcher.name, status=RunStatus.STARTING
        )
        session.add(run)
        if attempts:
            why = reason or "launched again"
            message = f"Relaunched as attempt {run.attempt}: {why}"
            events.record(
                session,
                job.id,
                EventType.RELAUNCHED,
                message,
                level="warning",
                attempt=run.attempt,
                reason=why,
            )
        job.heartbeat_at = utcnow()  # the new attempt gets a full grace period
        distributed = getattr(parse_spec(job.spec), "distributed", None)
    store = open_store(settings.resolved_artifact_uri)
    command = run_command(
        job_id,
        num_processes=distributed.num_processes if distributed else 1,
        num_machines=distributed.num_machines if distributed else 1,
        accelerate_config=distributed.accelerate_config if distributed else None,
    )
    request = LaunchRequest(
        job_id=job_id,
        attempt=run.attempt,
        command=command,
        gpus=(distributed.processes_per_machine if distributed else 1) * settings.gpus_per_process,
        env=settings_env(settings),
        log_dir=store.local_path(store.uri_for(f"runs/{job_id}/logs")),
        machines=distributed.num_machines if distributed else 1,
    )
    try:
        handle = launcher.launch(request)
    except LaunchRefused as refused:
        with db.session() as session:
            ended = {"status": RunStatus.ENDED, "ended_at": utcnow()}
            session.execute(update(Run).where(Run.id == run.id).values(**ended))
            job = session.get(Job, uuid.UUID(job_id))
            if job is not None:
                finish_job(session, job, JobStatus.FAILED, error=str(refused))
        log.warning("job %s: %s", job_id, refused)
        return None
    with db.session() as session:
        session.execute(
            update(Run).where(Run.id == run.id).values(handle=handle, status=RunStatus.RUNNING)
        )
    log.info("launched job %s attempt %s as %s", job_id, run.attempt, handle)
    return handle


def watch_once(db: Database, launcher: Launcher, settings: TrainerSettings) -> list[str]:
    """One pass: stop runs of cancelled jobs, relaunch silent ones; returns relaunched IDs."""
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    relaunch: dict[str, str] = {}  # job ID → why its run was taken for lost
    with db.session() as session:
        runs = session.execute(
            select(Run, Job)
            .join(Job, Job.id == Run.job_id)
            .where(Run.status == RunStatus.RUNNING, Job.kind.in_(TRAINING_KINDS))
        ).all()
        for run, job in runs:
            state = launcher.status(run.handle)
            if job.status not in JOB_ACTIVE:
                if state.phase in ("running", "pending"):
                    launcher.stop(run.handle)
                run.status, run.ended_at = RunStatus.ENDED, utcnow()
                continue
            beat = as_utc(job.heartbeat_at) or as_utc(run.started_at)
            if state.phase in ("succeeded", "failed", "unknown") or (beat and beat < stale_before):
                if state.phase in ("running", "pending"):
                    launcher.stop(run.handle)
                run.status, run.ended_at, run.exit_code = RunStatus.LOST, utcnow(), state.exit_code
                relaunch[str(job.id)] = _lost_because(run, state, beat, now)
    for job_id, reason in relaunch.items():
        log.warning("job %s: %s; relaunching", job_id, reason)
        launch(db, launcher, settings, job_id, reason=reason)
    return list(relaunch)


def _lost_because(run: Run, state: RunState, beat: datetime | None, now: datetime) -> str:
    """Why attempt ``run`` is taken for lost, in words."""
    if state.phase in ("running", "pending"):
        silent = f"{(now - beat).total_seconds():.0f} s" if beat else "ever"
        return f"attempt {run.attempt} sent no heartbeat for {silent}"
    if state.exit_code is not None:
        return f"attempt {run.attempt} exited with code {state.exit_code}"
    detail = f" ({state.message})" if state.message else ""
    return f"attempt {run.attempt} is gone{detail}"


class Watcher(threading.Thread):
    """Runs ``watch_once`` every ``watch_interval_s`` until stopped."""

    def __init__(self, db: Database, launcher: Launcher, settings: TrainerSettings) -> None:
        super().__init__(name="run-watcher", daemon=True)
        self.db, self.launcher, self.settings = db, launcher, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.watch_interval_s):
            try:
                watch_once(self.db, self.launcher, self.settings)
            except Exception:  # the watcher must outlive any one bad pass
                log.exception("watch pass failed")
