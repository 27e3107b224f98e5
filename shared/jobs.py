"""The job service: create, start, cancel, list — used by the gateway and the embedded runner.

Creating a job writes it and registers its first messages on the session; they leave
only when the caller's transaction commits (see ``shared.db.session``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.contracts import queues
from shared.contracts.api import TERMINAL_STATUSES
from shared.contracts.specs import (
    ColdstartSpec,
    JobSpec,
    PipelineSpec,
    parse_spec,
    referenced_datasets,
    spec_warnings,
)
from shared.db.models import Dataset, Item, Job, Team, utcnow
from shared.db.session import enqueue_after_commit
from shared.errors import Conflict, InvalidInput, JobNotFound


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    kind: str | None = None
    parent_id: uuid.UUID | None = None


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
) -> Job:
    """Write a queued job and register the messages that start it."""
    check_datasets(session, team=team, spec=spec)
    job = Job(
        team_id=team.id,
        parent_id=parent.id if parent else None,
        name=name or spec.kind,
        kind=spec.kind,
        status="queued",
        spec=spec.model_dump(mode="json"),
        warnings=spec_warnings(spec),
    )
    session.add(job)
    session.flush()
    start_job(session, job, spec)
    return job


def start_job(session: Session, job: Job, spec: JobSpec | None = None) -> None:
    """Register the first messages of a job, by kind."""
    spec = spec or parse_spec(job.spec)
    if isinstance(spec, ColdstartSpec):
        _plan_coldstart(session, job, spec)
    elif isinstance(spec, PipelineSpec):
        enqueue_after_commit(session, queues.JOB_ADVANCE, [str(job.id)])
    else:
        enqueue_after_commit(session, queues.TRAIN_LAUNCH, [str(job.id)])


def _plan_coldstart(session: Session, job: Job, spec: ColdstartSpec) -> None:
    query = (
        select(Item.id)
        .where(Item.dataset_id == uuid.UUID(spec.dataset_id))
        .order_by(Item.idx)
        .limit(spec.limit)
    )
    item_ids = [str(i) for i in session.scalars(query)]
    chunks = [item_ids[i : i + spec.chunk_size] for i in range(0, len(item_ids), spec.chunk_size)]
    job.items_total = len(item_ids)
    job.chunks_total = len(chunks)
    for chunk in chunks:
        enqueue_after_commit(session, queues.CAPTION_BATCH, [str(job.id), chunk])


def get_job(session: Session, *, team: Team | None, job_id: uuid.UUID) -> Job:
    """A job by ID; another team's job does not exist for the caller."""
    job = session.get(Job, job_id)
    if job is None or (team is not None and job.team_id != team.id):
        raise JobNotFound(job_id)
    return job


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
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return list(page), total


def cancel_job(session: Session, *, job: Job) -> Job:
    """Ask a job (and its children) to stop; queued work is dropped when it arrives."""
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job.id} is already {job.status}", job_id=str(job.id))
    children = session.scalars(select(Job).where(Job.parent_id == job.id))
    for child in children:
        if child.status not in TERMINAL_STATUSES:
            cancel_job(session, job=child)
    job.cancel_requested = True
    job.status = "cancelled"
    job.finished_at = utcnow()
    return job


def is_cancelled(session: Session, job_id: uuid.UUID) -> bool:
    """Whether a job was cancelled (workers ask before each unit of work)."""
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(flag)


def add_counters(session: Session, job_id: uuid.UUID, **deltas: int) -> None:
    """Atomically add to a job's integer progress columns."""
    values: dict[str, Any] = {name: getattr(Job, name) + delta for name, delta in deltas.items()}
    session.execute(update(Job).where(Job.id == job_id).values(**values))
