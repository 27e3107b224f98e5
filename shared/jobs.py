"""The job service: create, start, finish, cancel, list and read — used by the gateway,
the workers and the embedded runner.

Creating a job writes it and registers its first messages on the session; they leave
only when the caller's transaction commits (see ``shared.db.session``).  Finishing a job
settles it once and tells its pipeline, if it has one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import events
from shared.contracts import queues
from shared.contracts.specs import (
    ColdstartSpec,
    JobSpec,
    PipelineSpec,
    parse_spec,
    referenced_datasets,
    spec_warnings,
)
from shared.contracts.status import JOB_ACTIVE, JOB_TERMINAL, JobStatus
from shared.db.models import (
    Dataset,
    EvalResult,
    Item,
    Job,
    Metric,
    RolloutSample,
    Stage,
    Team,
    utcnow,
)
from shared.db.session import count_rows, enqueue_after_commit
from shared.errors import Conflict, InvalidInput, JobNotFound
from shared.events import EventType
from shared.teams import load_owned


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    kind: str | None = None
    parent_id: uuid.UUID | None = None


@dataclass(frozen=True)
class MetricFilter:
    names: list[str] | None = None
    stage: int | None = None
    after_step: int | None = None
    limit: int = 10_000


def _parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {value!r} is not a dataset ID", field=field) from exc


def check_datasets(session: Session, *, team: Team, spec: JobSpec) -> None:
    """Every dataset a spec names exists and belongs to the team."""
    for ref in referenced_datasets(spec):
        dataset = session.get(Dataset, _parse_uuid(ref, "spec"))
        if dataset is None or dataset.team_id != team.id:
            raise InvalidInput(f"spec names dataset {ref}, which does not exist", dataset_id=ref)


def create_job(
    session: Session,
    *,
    team: Team,
    spec: JobSpec,
    name: str | None = None,
    parent: Job | None = None,
    key: str | None = None,
) -> Job:
    """Write a queued job and register the messages that start it."""
    check_datasets(session, team=team, spec=spec)
    job = Job(
        team_id=team.id,
        idempotency_key=key,
        parent_id=parent.id if parent else None,
        name=name or spec.kind,
        kind=spec.kind,
        status=JobStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        warnings=spec_warnings(spec),
    )
    session.add(job)
    session.flush()
    parent_id = str(parent.id) if parent else None
    events.record(
        session,
        job.id,
        EventType.CREATED,
        f"Created {spec.kind} job {job.name!r}",
        kind=spec.kind,
        name=job.name,
        parent_id=parent_id,
    )
    start_job(session, job, spec)
    return job


def submit_job(
    session: Session,
    *,
    team: Team,
    spec: JobSpec,
    name: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Create a job for a client; with an idempotency key, a retry of the same submission
    returns the job the first one created (``False``: nothing new) and a different
    submission under a used key is a conflict."""
    if idempotency_key is None:
        return create_job(session, team=team, spec=spec, name=name), True
    existing = _by_key(session, team, idempotency_key)
    if existing is not None:
        return _same_submission(existing, spec), False
    try:
        with session.begin_nested():  # a concurrent request with the same key may win
            job = create_job(session, team=team, spec=spec, name=name, key=idempotency_key)
    except IntegrityError:
        existing = _by_key(session, team, idempotency_key)
        if existing is None:
            raise
        return _same_submission(existing, spec), False
    return job, True


def _by_key(session: Session, team: Team, key: str) -> Job | None:
    query = select(Job).where(Job.team_id == team.id, Job.idempotency_key == key)
    return session.scalars(query).first()


def _same_submission(job: Job, spec: JobSpec) -> Job:
    if job.spec != spec.model_dump(mode="json"):
        raise Conflict(
            "this Idempotency-Key was used for a different job spec; use a new key",
            job_id=str(job.id),
        )
    return job


def start_job(session: Session, job: Job, spec: JobSpec | None = None) -> None:
    """Register the first messages of a job, by kind."""
    spec = spec or parse_spec(job.spec)
    queued: dict[str, Any]
    if isinstance(spec, ColdstartSpec):
        _plan_coldstart(session, job, spec)
        message = f"Queued {job.chunks_total} chunks ({job.items_total} items)"
        queued = {"chunks": job.chunks_total, "items": job.items_total}
    elif isinstance(spec, PipelineSpec):
        enqueue_after_commit(session, queues.JOB_ADVANCE, [str(job.id)])
        message, queued = "Queued: the pipeline starts its first step", {"work": "advance"}
    else:
        enqueue_after_commit(session, queues.TRAIN_LAUNCH, [str(job.id)])
        message, queued = "Queued for a training launch", {"work": "launch"}
    events.record(session, job.id, EventType.QUEUED, message, **queued)


def coldstart_item_ids(session: Session, spec: ColdstartSpec) -> list[str]:
    """The items a coldstart job works on, in dataset order."""
    query = (
        select(Item.id)
        .where(Item.dataset_id == uuid.UUID(spec.dataset_id))
        .order_by(Item.idx)
        .limit(spec.limit)
    )
    return [str(i) for i in session.scalars(query)]


def chunked(item_ids: list[str], size: int) -> list[list[str]]:
    """Items in chunks of ``size`` (the last one shorter)."""
    return [item_ids[i : i + size] for i in range(0, len(item_ids), size)]


def _plan_coldstart(session: Session, job: Job, spec: ColdstartSpec) -> None:
    item_ids = coldstart_item_ids(session, spec)
    chunks = chunked(item_ids, spec.chunk_size)
    job.items_total = len(item_ids)
    job.chunks_total = len(chunks)
    for chunk in chunks:
        enqueue_after_commit(session, queues.CAPTION_BATCH, [str(job.id), chunk])


def get_job(session: Session, *, team: Team | None, job_id: uuid.UUID | str) -> Job:
    """A job by ID; another team's job does not exist for the caller."""
    return load_owned(session, Job, _job_uuid(job_id), team=team, missing=JobNotFound)


def _job_uuid(job_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise JobNotFound(job_id) from exc


def is_active(job: Job) -> bool:
    """Whether work for this job should go on (not cancelled, not finished)."""
    return not job.cancel_requested and job.status in JOB_ACTIVE


def mark_running(
    session: Session, job_id: uuid.UUID, message: str = "Job started", **data: Any
) -> bool:
    """queued → running, once, whoever starts first; True (and a ``started`` event) for
    the caller that moved it."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=utcnow())
    )
    moved = bool(cast(CursorResult[Any], result).rowcount)
    if moved:
        events.record(session, job_id, EventType.STARTED, message, **data)
    return moved


def finish_job(
    session: Session,
    job: Job,
    status: JobStatus,
    *,
    error: str | None = None,
    output: dict[str, Any] | None = None,
) -> bool:
    """Settle a still-active job once; its pipeline (if any) is told either way, so a
    pipeline whose child was settled by someone else still moves on."""
    settled = job.status in JOB_ACTIVE
    if settled:
        job.status, job.finished_at, job.error = status, utcnow(), error
        if output is not None:
            job.output = output
        events.record_outcome(session, job)
    notify_parent(session, job)
    return settled


def notify_parent(session: Session, job: Job) -> None:
    """Tell a child job's pipeline to look again (after this transaction commits)."""
    if job.parent_id is not None:
        enqueue_after_commit(session, queues.JOB_ADVANCE, [str(job.parent_id)])


def list_jobs(
    session: Session, *, team: Team, filters: JobFilter, limit: int, offset: int
) -> tuple[list[Job], int]:
    """A page of the team's jobs, newest first, and how many match in all."""
    query = select(Job).where(Job.team_id == team.id)
    if filters.status:
        query = query.where(Job.status == filters.status)
    if filters.kind:
        query = query.where(Job.kind == filters.kind)
    if filters.parent_id:
        query = query.where(Job.parent_id == filters.parent_id)
    total = count_rows(session, query)
    page = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return list(page), total


def cancel_job(session: Session, *, job: Job) -> Job:
    """Ask a job (and its children) to stop; queued work is dropped when it arrives."""
    if job.status in JOB_TERMINAL:
        raise Conflict(f"job {job.id} is already {job.status}", job_id=str(job.id))
    children = session.scalars(select(Job).where(Job.parent_id == job.id))
    for child in children:
        if child.status not in JOB_TERMINAL:
            cancel_job(session, job=child)
    job.cancel_requested = True
    job.status = JobStatus.CANCELLED
    job.finished_at = utcnow()
    events.record_outcome(session, job)
    return job


def is_cancelled(session: Session, job_id: uuid.UUID) -> bool:
    """Whether a job was cancelled (workers ask before each unit of work)."""
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(flag)


def list_stages(session: Session, *, job: Job) -> list[Stage]:
    """A training job's stages (the PTST stage state), in order."""
    return list(session.scalars(select(Stage).where(Stage.job_id == job.id).order_by(Stage.idx)))


def list_metrics(session: Session, *, job: Job, filters: MetricFilter) -> list[Metric]:
    """A job's metric points by stage, step and name, filtered."""
    query = select(Metric).where(Metric.job_id == job.id)
    if filters.names:
        query = query.where(Metric.name.in_(filters.names))
    if filters.stage is not None:
        query = query.where(Metric.stage_idx == filters.stage)
    if filters.after_step is not None:
        query = query.where(Metric.step > filters.after_step)
    query = query.order_by(Metric.stage_idx, Metric.step, Metric.name).limit(filters.limit)
    return list(session.scalars(query))


def add_counters(session: Session, job_id: uuid.UUID, **deltas: int) -> dict[str, int]:
    """Atomically add to a job's integer progress columns; their new values (the row lock
    orders concurrent callers, so each sees the counts its own addition made)."""
    names = list(deltas)
    values: dict[str, Any] = {name: getattr(Job, name) + deltas[name] for name in names}
    statement = update(Job).where(Job.id == job_id).values(**values)
    row = session.execute(statement.returning(*(getattr(Job, name) for name in names)))
    found = row.one_or_none()
    return {} if found is None else dict(zip(names, (int(v) for v in found), strict=True))


def require_kind(job: Job, *kinds: str, what: str) -> None:
    """Refuse a request for something only jobs of ``kinds`` have."""
    if job.kind not in kinds:
        raise Conflict(
            f"job {job.id} is a {job.kind} job; {what} belong to {' and '.join(kinds)} jobs",
            job_id=str(job.id),
            kind=job.kind,
        )


@dataclass(frozen=True)
class SampleFilter:
    stage: int | None = None
    step: int | None = None


def list_samples(
    session: Session, *, job: Job, filters: SampleFilter, limit: int, offset: int
) -> tuple[list[RolloutSample], int]:
    """A page of a GRPO job's kept completions by stage, step and place, and the total."""
    query = select(RolloutSample).where(RolloutSample.job_id == job.id)
    if filters.stage is not None:
        query = query.where(RolloutSample.stage_idx == filters.stage)
    if filters.step is not None:
        query = query.where(RolloutSample.step == filters.step)
    total = count_rows(session, query)
    order = (RolloutSample.stage_idx, RolloutSample.step, RolloutSample.idx)
    return list(session.scalars(query.order_by(*order).limit(limit).offset(offset))), total


@dataclass(frozen=True)
class ResultFilter:
    dataset_id: uuid.UUID | None = None
    correct: bool | None = None


def list_results(
    session: Session, *, job: Job, filters: ResultFilter, limit: int, offset: int
) -> tuple[list[tuple[EvalResult, Item]], int]:
    """A page of an eval job's per-item outcomes with their items, and the total."""
    query = (
        select(EvalResult, Item)
        .join(Item, Item.id == EvalResult.item_id)
        .where(EvalResult.job_id == job.id)
    )
    if filters.dataset_id is not None:
        query = query.where(EvalResult.dataset_id == filters.dataset_id)
    if filters.correct is not None:
        query = query.where(EvalResult.correct == filters.correct)
    total = count_rows(session, query)
    order = (EvalResult.dataset_id, Item.idx, EvalResult.label)
    rows = session.execute(query.order_by(*order).limit(limit).offset(offset))
    return [(result, item) for result, item in rows], total
