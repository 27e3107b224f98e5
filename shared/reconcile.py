"""The reconciler: work that is neither in flight nor done is found and sent again.

The database says what every active job still needs; the broker and the live workers say
what is in flight.  A periodic sweep compares the two and sends exactly the difference:

- a coldstart item whose record is unsettled (or was never created), which no queued
  message and no live worker's task names, and which nobody touched for ``stale_after_s``
  (a step at work touches its records every ``KEEPALIVE_S``) is sent again, to the queue
  of the step it is at: the captioner before its description exists, the reasoner after;
- a coldstart job whose items are all settled but which did not finish gets the message
  that finishes it;
- a training job still queued with no run and no launch in flight is launched; runs that
  were launched are the watcher's (heartbeat and relaunch);
- a pipeline whose current child ended without the pipeline moving on is advanced.

Why this is safe: work is resent only when two independent signals agree that nobody
holds it (no message for it in the broker or on a live worker, and no touch for longer
than several keep-alive periods), and every handler is idempotent: a step with a stored
result is never redone, a record settles once, engine outputs are cached.  Were a slow
chunk resent anyway, the second delivery would find its results or wait on the cache, and
each item would still be counted and exported exactly once.  Sending is through the
outbox, in the same transaction that resets the records' clock, so a resent item is not
resent again before another ``stale_after_s``.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.orm import Session

from shared import events
from shared.coldstart import ensure_records
from shared.contracts import queues
from shared.contracts.specs import ColdstartSpec, parse_spec
from shared.contracts.status import JOB_ACTIVE, RECORD_TERMINAL, RecordStep
from shared.db.models import GenerationRecord, Job, OutboxMessage, Run, as_utc, utcnow
from shared.db.session import Database, enqueue_after_commit
from shared.events import EventType
from shared.jobs import chunked, coldstart_item_ids

log = logging.getLogger(__name__)
TRAINING_KINDS = ("sft", "grpo", "eval")
# Steps whose work is the captioner's; later steps are the reasoner's.
CAPTIONER_STEPS = frozenset({RecordStep.PENDING, RecordStep.CAPTIONED})
_LOCK_ID = 0x5652_3152  # one sweeper at a time across replicas (Postgres advisory lock)


@dataclass
class InFlight:
    """What the broker holds and live workers run: items per coldstart job, and the
    job-level messages (task name, job ID)."""

    items: dict[str, set[str]] = field(default_factory=dict)
    jobs: set[tuple[str, str]] = field(default_factory=set)
    complete: bool = True  # False when the broker could not be read: resend nothing

    def add(self, task_name: str, args: list[Any]) -> None:
        """Count one message."""
        if not args:
            return
        job_id = str(args[0])
        self.jobs.add((task_name, job_id))
        if task_name in (queues.CAPTION_BATCH, queues.REASON_BATCH) and len(args) > 1:
            self.items.setdefault(job_id, set()).update(str(i) for i in args[1])


@dataclass
class Resent:
    """What one sweep sent again."""

    items: int = 0
    messages: int = 0
    jobs: set[str] = field(default_factory=set)

    def count(self, job_id: uuid.UUID, items: int = 0) -> None:
        self.items += items
        self.messages += 1
        self.jobs.add(str(job_id))


def _tell(session: Session, job: Job, message: str, **what: Any) -> None:
    """Say in the job's log what was sent again (in the transaction that sends it)."""
    events.record(session, job.id, EventType.RETRIED, message, level="warning", **what)


def sweep(db: Database, in_flight: InFlight, *, stale_after_s: float) -> Resent:
    """One pass over the active jobs; resends what is lost (nothing if the broker could
    not be read, or another replica is sweeping)."""
    resent = Resent()
    if not in_flight.complete:
        return resent
    stale_before = utcnow() - timedelta(seconds=stale_after_s)
    with db.session() as session:
        if not _sweep_lock(session):
            return resent
        active = session.scalars(
            select(Job).where(Job.status.in_(JOB_ACTIVE)).order_by(Job.created_at)
        ).all()
        for job in active:
            if job.kind == "coldstart":
                _coldstart(session, job, in_flight, stale_before, resent)
            elif job.kind in TRAINING_KINDS:
                _training(session, job, in_flight, stale_before, resent)
            elif job.kind == "pipeline":
                _pipeline(session, job, in_flight, stale_before, resent)
    if resent.messages:
        log.warning(
            "reconciler: resent %d messages (%d items) for jobs %s",
            resent.messages,
            resent.items,
            ", ".join(sorted(resent.jobs)),
        )
    return resent


def _sweep_lock(session: Session) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: one process (embedded mode)
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": _LOCK_ID}))


def _coldstart(
    session: Session, job: Job, in_flight: InFlight, stale_before: datetime, resent: Resent
) -> None:
    spec = parse_spec(job.spec)
    if not isinstance(spec, ColdstartSpec):
        return
    held = in_flight.items.get(str(job.id), set())
    lost: dict[str, list[str]] = {queues.CAPTION_BATCH: [], queues.REASON_BATCH: []}
    # Unsettled records nobody touched lately (a large job's settled ones are not read).
    stale = session.execute(
        select(GenerationRecord.item_id, GenerationRecord.step).where(
            GenerationRecord.job_id == job.id,
            GenerationRecord.status.not_in(RECORD_TERMINAL),
            GenerationRecord.updated_at < stale_before,
        )
    ).all()
    for item, step in stale:
        if str(item) not in held:
            task = queues.CAPTION_BATCH if step in CAPTIONER_STEPS else queues.REASON_BATCH
            lost[task].append(str(item))
    counts = session.execute(
        select(func.count(), func.count().filter(GenerationRecord.status.in_(RECORD_TERMINAL)))
        .select_from(GenerationRecord)
        .where(GenerationRecord.job_id == job.id)
    ).one()
    records, settled = int(counts[0]), int(counts[1])
    if records < job.items_total and as_utc(job.created_at) < stale_before:
        # Items no chunk ever reached (their messages were lost before the first visit).
        query = select(GenerationRecord.item_id).where(GenerationRecord.job_id == job.id)
        have = {str(i) for i in session.scalars(query)}
        never = [i for i in coldstart_item_ids(session, spec) if i not in have and i not in held]
        lost[queues.CAPTION_BATCH] += never
    unsettled = job.items_total - settled
    for task, ids in lost.items():
        if not ids:
            continue
        # Records are created (or touched) with the messages: their clock starts again.
        ensure_records(session, job.id, ids)
        session.execute(
            update(GenerationRecord)
            .where(GenerationRecord.job_id == job.id)
            .where(GenerationRecord.item_id.in_([uuid.UUID(i) for i in ids]))
            .values(updated_at=utcnow())
        )
        chunks = chunked(ids, spec.chunk_size)
        for chunk in chunks:
            enqueue_after_commit(session, task, [str(job.id), chunk])
            resent.count(job.id, len(chunk))
        message = f"Resent {len(ids)} lost items in {len(chunks)} messages to {task}"
        _tell(session, job, message, task=task, items=len(ids), messages=len(chunks))
    finishing = (queues.REASON_BATCH, str(job.id)) in in_flight.jobs
    if unsettled <= 0 and job.items_total and not finishing and _quiet_since(job, stale_before):
        # Every item is settled but the job did not finish: the reasoner assembles it.
        enqueue_after_commit(session, queues.REASON_BATCH, [str(job.id), []])
        resent.count(job.id)
        message = "Every item is settled: resent the message that finishes the job"
        _tell(session, job, message, task=queues.REASON_BATCH, items=0, messages=1)


def _quiet_since(job: Job, stale_before: datetime) -> bool:
    last = job.started_at or job.created_at
    return as_utc(last) < stale_before


def _training(
    session: Session, job: Job, in_flight: InFlight, stale_before: datetime, resent: Resent
) -> None:
    if job.status != "queued" or (queues.TRAIN_LAUNCH, str(job.id)) in in_flight.jobs:
        return
    if as_utc(job.created_at) >= stale_before:
        return
    launched = session.scalar(select(exists().where(Run.job_id == job.id)))
    if not launched:
        enqueue_after_commit(session, queues.TRAIN_LAUNCH, [str(job.id)])
        resent.count(job.id)
        message = "The launch was lost: sent it again"
        _tell(session, job, message, task=queues.TRAIN_LAUNCH, items=0, messages=1)


def _pipeline(
    session: Session, job: Job, in_flight: InFlight, stale_before: datetime, resent: Resent
) -> None:
    if (queues.JOB_ADVANCE, str(job.id)) in in_flight.jobs:
        return
    children = session.scalars(select(Job).where(Job.parent_id == job.id)).all()
    if any(c.status in JOB_ACTIVE for c in children):
        return  # the running child tells the pipeline when it ends
    last = max((c.finished_at or c.created_at for c in children), default=job.created_at)
    if as_utc(last) < stale_before:
        enqueue_after_commit(session, queues.JOB_ADVANCE, [str(job.id)])
        resent.count(job.id)
        message = "The pipeline did not move on: sent its next step again"
        _tell(session, job, message, task=queues.JOB_ADVANCE, items=0, messages=1)


# --- what is in flight ------------------------------------------------------------------


def broker_in_flight(app: Any, *, inspect_timeout_s: float = 1.0) -> InFlight:
    """The messages waiting in the platform's queues and the tasks live workers hold.

    Waiting messages are read from the broker (Redis lists, every priority level); tasks
    being run or reserved are asked of the workers (Celery's remote control).  A worker
    busy in a solo pool may not answer; its chunk keeps its records touched instead.
    Messages delivered to a worker that died are in neither: they are what is lost.
    """
    found = InFlight()
    try:
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            client = channel.client
            for queue in queues.QUEUES:
                for key in _queue_keys(channel, queue):
                    for raw in client.lrange(key, 0, -1):
                        _add_raw(found, raw)
        inspector = app.control.inspect(timeout=inspect_timeout_s)
        for answer in (inspector.active() or {}, inspector.reserved() or {}):
            for tasks in answer.values():
                for task in tasks:
                    found.add(str(task.get("name", "")), list(task.get("args") or []))
    except Exception as exc:  # the broker is away: nothing can be told lost
        log.warning("reconciler: cannot read the broker: %s", exc)
        found.complete = False
    return found


def outbox_in_flight(db: Database) -> InFlight:
    """Without a broker, what the database's outbox still holds: nothing it names is lost
    (the embedded worker takes a message off the outbox as it starts it)."""
    found = InFlight()
    with db.session() as session:
        query = select(OutboxMessage.task_name, OutboxMessage.args)
        for task_name, args in session.execute(query):
            found.add(task_name, list(args))
    return found


def _queue_keys(channel: Any, queue: str) -> Iterable[str]:
    """The Redis lists that hold a queue's messages (one per priority level)."""
    prefix = getattr(channel, "global_keyprefix", "") or ""
    for priority in getattr(channel, "priority_steps", [0]):
        yield f"{prefix}{queue}" if not priority else f"{prefix}{queue}{channel.sep}{priority}"


def _add_raw(found: InFlight, raw: bytes | str) -> None:
    """One message as kombu stores it: a JSON envelope around a Celery protocol-2 body."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        found.add(str(envelope["headers"]["task"]), list(args))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("reconciler: unreadable message in the broker: %s", exc)
