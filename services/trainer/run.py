"""A training run: the process ``vr1 train-run <job id>`` that a launcher starts.

It reads its job, heartbeats, runs the job's kind (``sft``, ``grpo`` stage by stage,
``eval``), writes stage state, metrics and artifacts, and finishes the job.  Started
again after a crash, it skips finished stages and resumes the current one from its last
checkpoint.
"""

from __future__ import annotations

import logging
import traceback
import uuid

from sqlalchemy import update

from services.trainer.callbacks import TrainingStopped
from services.trainer.evaluation import evaluate
from services.trainer.inputs import prompt_rows, sft_train_file
from services.trainer.ptst import run_grpo_job
from services.trainer.settings import TrainerSettings
from services.trainer.sft import run_sft
from services.trainer.tracking import Heartbeat, Tracker, latest_checkpoint
from shared.contracts import queues
from shared.contracts.specs import EvalSpec, GrpoSpec, SftSpec, parse_spec
from shared.db.models import Dataset, EvalResult, Job, utcnow
from shared.db.session import Database, Dispatcher, enqueue_after_commit
from shared.errors import InvalidInput, JobNotFound
from shared.storage import open_store, path_from_uri

log = logging.getLogger(__name__)


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
        should_stop=tracker.should_stop,
        resume_from=resume,
        checkpoint_every=settings.checkpoint_every,
    )
    uri = tracker.save_artifact(
        final, f"runs/{tracker.job_id}/checkpoints/sft", kind="checkpoint", name="sft"
    )
    tracker.update_stage(0, status="succeeded", finished_at=utcnow(), checkpoint_uri=uri)
    return {"checkpoint_uri": uri}


def run_eval_job(tracker: Tracker, spec: EvalSpec) -> dict[str, object]:
    """Accuracy per dataset; every item's completion and verdict stored."""
    tracker.ensure_stages([("eval", spec.model_dump(mode="json"))])
    tracker.start_stage(0, None)
    model = path_from_uri(spec.model)
    table: dict[str, dict[str, float | int]] = {}
    for dataset_id in spec.dataset_ids:
        rows = prompt_rows(tracker.db, tracker.store, dataset_id)
        summary = evaluate(model, rows, spec)
        with tracker.db.session() as session:
            for item in summary.items:
                session.merge(
                    EvalResult(
                        job_id=tracker.job_id,
                        dataset_id=uuid.UUID(dataset_id),
                        item_id=uuid.UUID(str(item.id)),
                        label="",
                        tries=item.tries,
                        completion=item.completion,
                        extracted=item.extracted,
                        correct=item.correct,
                        reason=None if item.format_ok else "bad_format",
                    )
                )
            name = session.get(Dataset, uuid.UUID(dataset_id))
            label = name.name if name else dataset_id
        table[label] = {
            "accuracy": summary.accuracy,
            "format_rate": summary.format_rate,
            "n": summary.n,
        }
        tracker.log(
            0, len(table), {"accuracy": summary.accuracy, "format_rate": summary.format_rate}
        )
    tracker.update_stage(0, status="succeeded", finished_at=utcnow(), summary={"table": table})
    return {"accuracy": table}


def _finish(
    db: Database,
    job_id: uuid.UUID,
    *,
    status: str,
    output: dict[str, object] | None,
    error: str | None,
) -> None:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        if job.status in ("running", "queued"):
            job.status, job.finished_at, job.error = status, utcnow(), error
            if output is not None:
                job.output = output
        if job.parent_id is not None:
            enqueue_after_commit(session, queues.JOB_ADVANCE, [str(job.parent_id)])


def _start(db: Database, job_id: uuid.UUID) -> Job | None:
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.cancel_requested or job.status not in ("queued", "running"):
            return None
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="running", started_at=utcnow())
        )
        return job


def train_run(settings: TrainerSettings, job_id: str, dispatcher: Dispatcher | None = None) -> int:
    """Run one training job to its end; the exit code says whether it succeeded."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    db = Database(settings.resolved_database_url, dispatcher)
    store = open_store(settings.resolved_artifact_uri)
    job = _start(db, uuid.UUID(job_id))
    if job is None:
        return 0
    workdir = store.local_path(store.uri_for(f"runs/{job_id}"))
    tracker = Tracker(db, store, job.id, job.team_id, workdir)
    spec = parse_spec(job.spec)
    try:
        with Heartbeat(db, job.id, settings.heartbeat_interval_s):
            if isinstance(spec, SftSpec):
                output = run_sft_job(tracker, settings, spec)
            elif isinstance(spec, GrpoSpec):
                output = run_grpo_job(tracker, settings, spec)
            elif isinstance(spec, EvalSpec):
                output = run_eval_job(tracker, spec)
            else:
                raise InvalidInput(f"{spec.kind} jobs are not training runs", job_id=job_id)
    except TrainingStopped as stopped:
        log.info("job %s stopped at step %s", job_id, stopped.step)
        _finish(db, job.id, status="cancelled", output=None, error=None)
        return 0
    except Exception as exc:
        log.exception("job %s failed", job_id)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        _finish(db, job.id, status="failed", output=None, error=detail[:4000])
        return 1
    _finish(db, job.id, status="succeeded", output=output, error=None)
    return 0
