"""A job's event log: what happened to it, in order, each with time, level, type, message
and data (the shape OpenAI's and Together's fine-tuning APIs use).

Events are written in the transaction of the change they tell about, so the log never
says something happened that was rolled back.  Per-item failures are sampled: the first
``ITEM_FAILURES_LOGGED`` of a job are logged one by one, later ones only counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.contracts.status import JobStatus
from shared.db.models import Job, JobEvent
from shared.db.session import count_rows


class EventType(StrEnum):
    """What an event tells about; dotted names belong to a part of the job (stage, item…)."""

    CREATED = "created"
    QUEUED = "queued"
    STARTED = "started"
    STAGE_STARTED = "stage.started"
    STAGE_FINISHED = "stage.finished"
    CHECKPOINT_SAVED = "checkpoint.saved"
    ITEM_FAILED = "item.failed"
    RETRIED = "retried"
    RELAUNCHED = "relaunched"
    CHILD_CREATED = "child.created"
    CANCELLED = "cancelled"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    INFO = "info"


ITEM_FAILURES_LOGGED = 20


@dataclass(frozen=True)
class EventFilter:
    """Which of a job's events to list: after an event ID, of some types, of one level."""

    after: int | None = None
    types: list[str] | None = None
    level: str | None = None


def record(
    session: Session,
    job_id: uuid.UUID | str,
    type: EventType,
    message: str,
    *,
    level: str = "info",
    stage_idx: int | None = None,
    **data: Any,
) -> JobEvent:
    """Add an event to the session (it lands when the caller commits)."""
    event = JobEvent(
        job_id=job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id),
        type=str(type),
        level=level,
        message=message,
        stage_idx=stage_idx,
        data=data,
    )
    session.add(event)
    return event


def list_events(
    session: Session, *, job: Job, filters: EventFilter, limit: int, offset: int
) -> tuple[list[JobEvent], int]:
    """A page of a job's events, oldest first, and how many match in all."""
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if filters.after is not None:
        query = query.where(JobEvent.id > filters.after)
    if filters.types:
        query = query.where(JobEvent.type.in_(filters.types))
    if filters.level:
        query = query.where(JobEvent.level == filters.level)
    total = count_rows(session, query)
    rows = session.scalars(query.order_by(JobEvent.id).limit(limit).offset(offset))
    return list(rows), total


def record_outcome(session: Session, job: Job) -> JobEvent | None:
    """The event of a job's settled status; a job with items says how many failed, so the
    total is in the log even where item failures were only counted."""
    counts: dict[str, Any] = {}
    if job.items_total:
        counts = {"items_total": job.items_total, "items_done": job.items_done}
        counts["items_failed"] = job.items_failed
    tally = f" ({job.items_done} items done, {job.items_failed} failed)" if counts else ""
    if job.status == JobStatus.SUCCEEDED:
        return record(session, job.id, EventType.SUCCEEDED, f"Job succeeded{tally}", **counts)
    if job.status == JobStatus.FAILED:
        message = job.error or f"Job failed{tally}"
        return record(session, job.id, EventType.FAILED, message, level="error", **counts)
    if job.status == JobStatus.CANCELLED:
        message = f"Job cancelled{tally}"
        return record(session, job.id, EventType.CANCELLED, message, level="warning", **counts)
    return None
