"""A training run: the process ``python -m services.trainer.run <job id>`` a launcher starts.

It reads its job, heartbeats, runs the job's kind (``sft``, ``grpo`` stage by stage,
``eval``), writes stage state, metrics and artifacts, and finishes the job.  Started
again after a crash, it skips finished stages and resumes the current one from its last
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import traceback
import uuid
from typing import Any

from sqlalchemy import select

from services.trainer.callbacks import TrainingStopped
from services.trainer.eval_job import evaluate_datasets
from services.trainer.evaluation import eval_engine_spec
from services.trainer.inputs import sft_train_file
from services.trainer.ptst import run_grpo_job
from services.trainer.ranks import Ranks
from services.trainer.reporting import run_name, save_tracker_files
from services.trainer.settings import TrainerSettings
from services.trainer.sft import run_sft
from services.trainer.tracking import (
    Heartbeat,
    Tracker,
    fail_running_stages,
    latest_checkpoint,
)
from shared import events
from shared.contracts.specs import EvalSpec, GrpoSpec, JobSpec, SftSpec, parse_spec
from shared.contracts.status import JobStatus, StageStatus
from shared.db.models import Job, Run
from shared.db.session import Database, Dispatcher, outlasting
from shared.engines import make_engine
from shared.errors import VR1Error, WrongJobKind
from shared.events import EventType
from shared.jobs import finish_job, get_job, is_active, mark_running
from shared.queue import CeleryDispatcher, make_celery
from shared.storage import open_store, path_from_uri

log = logging.getLogger(__name__)
DB_PATIENCE_S = 600.0  # how long a run waits out a database outage


def run_sft_job(tracker: Tracker, settings: TrainerSettings, spec: SftSpec) -> dict[str, object]:
    """Cold-start SFT as one stage; resumes from its last checkpoint after a crash."""
    tracker.ensure_stages([("sft", spec.model_dump(mode="json"))])
    out_dir = tracker.workdir / "stage-0"
    resume = latest_checkpoint(out_dir)
    tracker.start_stage(0, resume)
    final = run_sft(
        path_from_uri(spec.model),
        sft_train_file(tracker.db, tracker.store, spec.dataset_id),
        out_dir,
        spec,
        on_log=lambda step, values: tracker.log(0, step, values),
        on_plan=lambda steps: tracker.update_stage(0, summary={"steps": steps}),
        should_stop=tracker.should_stop,
        resume_from=resume,
        checkpoint_every=settings.checkpoint_every,
        run_name=run_name(tracker),
    )
    save_tracker_files(tracker, out_dir, 0)
    uri = tracker.save_checkpoint(
        final, f"runs/{tracker.job_id}/checkpoints/sft", name="sft", stage_idx=0
    )
    tracker.finish_stage(0, StageStatus.SUCCEEDED, checkpoint_uri=uri)
    return {"checkpoint_uri": uri}


def run_eval_job(tracker: Tracker, spec: EvalSpec) -> dict[str, object]:
    """Accuracy per dataset; every item's completion and verdict stored."""
    tracker.ensure_stages([("eval", spec.model_dump(mode="json"))])
    tracker.start_stage(0, None)
    engine = make_engine(eval_engine_spec(path_from_uri(spec.model), spec))
    try:
        table = evaluate_datasets(tracker, spec, engine)
    finally:
        engine.close()
    tracker.finish_stage(0, StageStatus.SUCCEEDED, summary={"table": table})
    return {"accuracy": table}


def _finish(
    db: Database,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    output: dict[str, object] | None = None,
    error: str | None = None,
) -> None:
    def once() -> None:
        with db.session() as session:
            job = get_job(session, team=None, job_id=job_id)
            settled = finish_job(session, job, status, error=error, output=output)
            if settled and status == JobStatus.FAILED:
                fail_running_stages(session, job_id)

    # Hours of training are not lost to a database that is away when the run ends.
    outlasting(once, within_s=DB_PATIENCE_S, what=f"job {job_id}: outcome")


def _start(db: Database, job_id: uuid.UUID, processes: int) -> Job | None:
    """The job, marked running, with this attempt in its log; None when there is nothing
    (left) to run."""
    with db.session() as session:
        job = get_job(session, team=None, job_id=job_id)
        if not is_active(job):
            return None
        latest = select(Run).where(Run.job_id == job.id).order_by(Run.attempt.desc()).limit(1)
        run = session.scalar(latest)
        attempt = run.attempt if run is not None else 1
        launcher = run.launcher if run is not None else "direct"
        plural = "es" if processes > 1 else ""
        message = f"Attempt {attempt} started ({launcher}, {processes} process{plural})"
        facts: dict[str, Any] = dict(attempt=attempt, launcher=launcher, processes=processes)
        if not mark_running(session, job.id, message, **facts):  # a relaunch: already running
            events.record(session, job.id, EventType.STARTED, message, **facts)
        return job


def train_run(settings: TrainerSettings, job_id: str, dispatcher: Dispatcher | None = None) -> int:
    """Run one training job to its end; the exit code says whether it succeeded.

    Every process of a multi-process run calls this; the main one keeps the record.
    """
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    db = Database(settings.resolved_database_url, dispatcher)
    store = open_store(settings.resolved_artifact_uri)
    ranks = Ranks.current()
    job = _start(db, uuid.UUID(job_id), ranks.count) if ranks.is_main else None
    if not ranks.from_main(job is not None):
        return 0
    with db.session() as session:
        job = get_job(session, team=None, job_id=job_id)
    workdir = store.local_path(store.uri_for(f"runs/{job_id}"))
    tracker = Tracker(db, store, job.id, job.team_id, workdir, ranks=ranks)
    spec = parse_spec(job.spec)
    beating = Heartbeat(db, job.id, settings.heartbeat_interval_s) if ranks.is_main else None
    try:
        with beating or contextlib.nullcontext():
            output = _run_kind(tracker, settings, spec, job_id)
    except RunLost as lost:
        log.warning("job %s: this attempt was lost (%s); the watcher relaunches it", job_id, lost)
        return 1
    except TrainingStopped as stopped:
        log.info("job %s stopped at step %s", job_id, stopped.step)
        if ranks.is_main:
            _finish(db, job.id, JobStatus.CANCELLED)
        return 0
    except Exception as exc:  # whatever ended the run, the job records why
        if ranks.count > 1 and peer_lost(exc):
            log.warning("job %s: a process of this attempt is gone (%s); relaunching", job_id, exc)
            return 1
        log.exception("job %s failed", job_id)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        if ranks.is_main:
            _finish(db, job.id, JobStatus.FAILED, error=detail[:4000])
        return 1
    if ranks.is_main:
        _finish(db, job.id, JobStatus.SUCCEEDED, output=output)
    return 0


class RunLost(VR1Error):
    """This attempt ended from outside (SIGTERM: its process group torn down, its pod
    evicted); the job is not at fault, and the watcher relaunches it from a checkpoint."""

    code = "run_lost"


def _interrupted(signum: int, _frame: object) -> None:
    raise RunLost(f"signal {signal.Signals(signum).name}")


# What gloo and NCCL say when a peer process died under a collective operation.
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe")


def peer_lost(exc: BaseException) -> bool:
    """Whether a failure came from the process group losing a member, not from the job."""
    import torch.distributed

    if isinstance(exc, torch.distributed.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _PEER_GONE)


def _run_kind(
    tracker: Tracker, settings: TrainerSettings, spec: JobSpec, job_id: str
) -> dict[str, object]:
    if isinstance(spec, SftSpec):
        return run_sft_job(tracker, settings, spec)
    if isinstance(spec, GrpoSpec):
        return run_grpo_job(tracker, settings, spec)
    if isinstance(spec, EvalSpec):
        return run_eval_job(tracker, spec)
    raise WrongJobKind(job_id, expected="sft, grpo or eval", actual=spec.kind)


def main(argv: list[str] | None = None) -> None:
    """Entry of a launched run: ``python -m services.trainer.run <job id>``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m services.trainer.run <job id>\n")
        raise SystemExit(2)
    settings = TrainerSettings()
    logging.basicConfig(level=settings.log_level)
    signal.signal(signal.SIGTERM, _interrupted)
    # Without a broker the run's messages go to the database's outbox (embedded mode).
    dispatcher = CeleryDispatcher(make_celery(settings.redis_url)) if settings.redis_url else None
    raise SystemExit(train_run(settings, args[0], dispatcher))


if __name__ == "__main__":
    main()
