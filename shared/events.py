"""A job's event log: what happened to it, in order, each with time, level, type, message
and data (the shape OpenAI's and Together's fine-tuning APIs use).

Events are written in the transaction of the change they tell about, so the log never
says something happened that was rolled back.  Per-item failures are sampled: the first
``ITEM_FAILURES_LOGGED`` of a job are logged one by one, later ones only counted.

A reader follows a log with ``after`` = the last ID it saw, so a job's events must become
visible in ID order: an event whose ID was taken before another's but committed after it
would be skipped by a reader that polled between the two commits.  Events are therefore
held back until their transaction commits, and inserted then under a per-job lock held
to the end of the commit (PostgreSQL's transaction-scoped advisory lock; SQLite has one
writer at a time already).  It is the last lock the transaction takes, so it cannot take
part in a deadlock, and it is held for the length of a commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, SessionTransaction

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
    OFF_POLICY = "rollout.off_policy"
    ITEM_FAILED = "item.failed"
    RETRIED = "retried"
    RELAUNCHED = "relaunched"
    CHILD_CREATED = "child.created"
    CANCELLED = "cancelled"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    INFO = "info"


ITEM_FAILURES_LOGGED = 20
_HELD = "vr1_events_held"  # session.info: events waiting for their transaction's commit
_AT_COMMIT = "vr1_events_at_commit"  # session.info: callables that record events at commit


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
    """Hold an event for the session's transaction: it is written when the caller commits,
    and vanishes with a rollback."""
    job_event = JobEvent(
        job_id=job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id),
        type=str(type),
        level=level,
        message=message,
        stage_idx=stage_idx,
        data=data,
    )
    if not session.in_transaction():
        session.begin()  # so that a rollback before any other work still drops the event
    savepoint = session.get_nested_transaction()  # a rollback to it drops the event
    session.info.setdefault(_HELD, []).append((savepoint, job_event))
    return job_event


def record_at_commit(session: Session, write: Callable[[Session], object]) -> None:
    """Call ``write`` (which records events) as the session commits, after all its other
    work: for an event that tells the outcome the transaction settles on."""
    session.info.setdefault(_AT_COMMIT, []).append(write)


@event.listens_for(Session, "before_commit")
def _write_held(session: Session) -> None:
    if session.get_nested_transaction() is not None:  # a savepoint released: not yet
        return
    for write in session.info.pop(_AT_COMMIT, []):
        write(session)
    held = [job_event for _, job_event in session.info.pop(_HELD, [])]
    if not held:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.flush()  # every other write first: the lock below is the transaction's last
        for key in sorted({_lock_key(e.job_id) for e in held}):  # one order: no deadlock
            session.execute(select(func.pg_advisory_xact_lock(key)))
    session.add_all(held)


@event.listens_for(Session, "after_transaction_end")
def _drop_all_held(session: Session, ended: SessionTransaction) -> None:
    if ended.parent is None:  # rolled back or closed (a commit took what was held)
        session.info.pop(_HELD, None)
        session.info.pop(_AT_COMMIT, None)


@event.listens_for(Session, "after_soft_rollback")
def _drop_held(session: Session, rolled_back: SessionTransaction) -> None:
    if rolled_back.nested and _HELD in session.info:  # a savepoint: what was held in it
        kept = [(sp, e) for sp, e in session.info[_HELD] if not _within(sp, rolled_back)]
        session.info[_HELD] = kept


def _within(savepoint: SessionTransaction | None, outer: SessionTransaction) -> bool:
    while savepoint is not None:
        if savepoint is outer:
            return True
        savepoint = savepoint.parent
    return False


def _lock_key(job_id: uuid.UUID) -> int:
    """A job's advisory-lock key: the first 8 bytes of its ID as a signed 64-bit integer."""
    return int.from_bytes(job_id.bytes[:8], "big", signed=True)


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
