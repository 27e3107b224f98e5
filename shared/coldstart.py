"""Cold-start bookkeeping shared by the captioner and the reasoner.

Every write is idempotent per (job, item, step): records are created with
insert-or-ignore, a step with a stored result is never redone, an item reaches a
terminal state once (the progress counters move only on that transition), and engine
outputs are cached by everything that determines them, so a redelivered message or a
re-run of the same job pays for nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from sqlalchemy import CursorResult, Update, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import events
from shared.contracts.api import FunnelOut
from shared.contracts.specs import ColdstartSpec, EngineSpec, parse_spec
from shared.contracts.status import RECORD_TERMINAL, JobStatus, RecordStatus, RecordStep
from shared.db.models import GenerationCache, GenerationRecord, Item, Job, utcnow
from shared.db.session import Database, count_rows
from shared.errors import InvalidInput, WrongJobKind
from shared.events import ITEM_FAILURES_LOGGED, EventType
from shared.jobs import add_counters, get_job

# A record's step (RecordStep) says how far its item got; its status whether it is settled.
log = logging.getLogger(__name__)
# A step at work touches its records this often; the reconciler takes records untouched for
# several times as long (and in no queue, on no live worker) for lost.
KEEPALIVE_S = 15.0


def _insert(session: Session, model: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def _rowcount(session: Session, statement: Update) -> int:
    """How many rows a conditional UPDATE changed (the atomic test-and-set)."""
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount)


def load_job(session: Session, job_id: str) -> tuple[Job, ColdstartSpec]:
    """A coldstart job and its spec; raises JobNotFound or WrongJobKind."""
    job = get_job(session, team=None, job_id=job_id)
    spec = parse_spec(job.spec)
    if not isinstance(spec, ColdstartSpec):
        raise WrongJobKind(job_id, expected="coldstart", actual=job.kind)
    return job, spec


def ensure_records(
    session: Session, job_id: uuid.UUID, item_ids: Sequence[str]
) -> list[tuple[GenerationRecord, Item]]:
    """The chunk's records (created if missing) with their items, in chunk order."""
    ids = [uuid.UUID(i) for i in item_ids]
    by_item = _records_by_item(session, job_id, ids)
    missing = [i for i in ids if i not in by_item]  # only a chunk's first visit writes
    if missing:
        rows = [{"job_id": job_id, "item_id": i, "updated_at": utcnow()} for i in missing]
        session.execute(_insert(session, GenerationRecord).values(rows).on_conflict_do_nothing())
        by_item |= _records_by_item(session, job_id, missing)
    return [by_item[i] for i in ids if i in by_item]


def _records_by_item(
    session: Session, job_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[GenerationRecord, Item]]:
    found = session.execute(
        select(GenerationRecord, Item)
        .join(Item, Item.id == GenerationRecord.item_id)
        .where(GenerationRecord.job_id == job_id, GenerationRecord.item_id.in_(ids))
    ).all()
    return {item.id: (record, item) for record, item in found}


def cache_key(
    step: str, engine: EngineSpec, prompt_version: str, prompt: str, images: Iterable[str]
) -> str:
    """Everything that determines an engine output, hashed."""
    material = {
        "step": step,
        "engine": engine.engine,
        "model": engine.model,
        "generation": engine.generation.model_dump(mode="json"),
        "prompt_version": prompt_version,
        "prompt": prompt,
        "images": list(images),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def cache_get(session: Session, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Cached outputs for the keys that have one."""
    wanted = list(set(keys))
    if not wanted:
        return {}
    rows = session.scalars(select(GenerationCache).where(GenerationCache.key.in_(wanted)))
    return {row.key: row.output for row in rows}


def cache_put(session: Session, step: str, outputs: dict[str, dict[str, Any]]) -> None:
    """Keep engine outputs by key; a concurrent writer of the same key wins harmlessly."""
    if not outputs:
        return
    now = utcnow()
    rows = [
        {"key": key, "step": step, "output": output, "created_at": now}
        for key, output in outputs.items()
    ]
    session.execute(_insert(session, GenerationCache).values(rows).on_conflict_do_nothing())


Outcome = tuple[GenerationRecord, str, str | None, str | None]  # record, status, reason, error


@dataclass(frozen=True)
class _Failure:
    item_id: uuid.UUID
    step: str
    reason: str | None
    error: str | None


def settle_many(session: Session, outcomes: Sequence[Outcome]) -> int:
    """Move records to terminal statuses, each once; progress counters follow those moves
    only.  One conditional UPDATE per distinct (status, reason, error), one for the job."""
    groups: dict[tuple[str, str | None, str | None], list[GenerationRecord]] = {}
    for record, status, reason, error in outcomes:
        if status not in RECORD_TERMINAL:
            raise InvalidInput(f"{status!r} is not a settled record status", record=record.id)
        groups.setdefault((status, reason, error), []).append(record)
    deltas: dict[str, int] = {}
    failures: list[_Failure] = []
    for (status, reason, error), records in groups.items():
        moved = session.execute(
            update(GenerationRecord)
            .where(
                GenerationRecord.id.in_([r.id for r in records]),
                GenerationRecord.status.not_in(RECORD_TERMINAL),
            )
            .values(status=status, reject_reason=reason, error=error, updated_at=utcnow())
            .returning(GenerationRecord.item_id, GenerationRecord.step)
        ).all()
        counter = "items_failed" if status == RecordStatus.FAILED else "items_done"
        deltas[counter] = deltas.get(counter, 0) + len(moved)
        if status == RecordStatus.FAILED:
            failures += [_Failure(item, step, reason, error) for item, step in moved]
        for record in records:
            session.expire(record)
    if any(deltas.values()):
        job_id = outcomes[0][0].job_id
        counts = add_counters(session, job_id, **deltas)
        if failures:
            _log_failures(session, job_id, failures, counts.get("items_failed", 0))
    return sum(deltas.values())


def _log_failures(
    session: Session, job_id: uuid.UUID, failures: list[_Failure], failed_now: int
) -> None:
    """``item.failed`` events for the job's first ``ITEM_FAILURES_LOGGED`` failed items; the
    job's counter (just raised by ``failures``) numbers them, so concurrent chunks log
    exactly that many between them and a job of a million bad items logs no more."""
    first = failed_now - len(failures) + 1  # the number of this transaction's first failure
    logged = failures[: max(0, ITEM_FAILURES_LOGGED - first + 1)]
    query = select(Item.id, Item.idx).where(Item.id.in_([f.item_id for f in logged]))
    places = {item: idx for item, idx in session.execute(query)} if logged else {}
    for failure in logged:
        idx = places.get(failure.item_id)
        detail = (failure.error or failure.reason or "unknown error")[:300]
        events.record(
            session,
            job_id,
            EventType.ITEM_FAILED,
            f"Item {idx} failed: {detail}",
            level="warning",
            item_id=str(failure.item_id),
            idx=idx,
            step=failure.step,
            reason=failure.reason,
        )
    if first <= ITEM_FAILURES_LOGGED + 1 <= failed_now:  # this batch holds the first unlogged
        message = (
            f"{ITEM_FAILURES_LOGGED} item failures logged; later ones are only counted "
            "(the job's items_failed)"
        )
        events.record(session, job_id, EventType.INFO, message)


def settle(
    session: Session,
    record: GenerationRecord,
    status: str,
    *,
    reason: str | None = None,
    error: str | None = None,
) -> bool:
    """Move a record to a terminal status once; progress counters follow that move only."""
    return settle_many(session, [(record, status, reason, error)]) == 1


def start_attempts(
    session: Session, step: str, records: Sequence[GenerationRecord], max_attempts: int
) -> list[GenerationRecord]:
    """Count one more start of ``step`` on each record; those already started
    ``max_attempts`` times (each start died with its worker) are settled as failed
    instead.  Returns the records to run."""
    runnable = [r for r in records if r.attempts < max_attempts]
    spent = [r for r in records if r.attempts >= max_attempts]
    for record in runnable:
        record.attempts += 1
    if spent:
        error = f"{step} was started {max_attempts} times without finishing"
        settle_many(session, [(r, RecordStatus.FAILED, f"{step}_gave_up", error) for r in spent])
    return runnable


def all_settled(session: Session, job: Job) -> bool:
    """Whether every item of the job has reached a terminal status."""
    settled = session.scalar(
        select(func.count())
        .select_from(GenerationRecord)
        .where(GenerationRecord.job_id == job.id, GenerationRecord.status.in_(RECORD_TERMINAL))
    )
    return (settled or 0) >= job.items_total


def claim_completion(session: Session, job_id: uuid.UUID) -> bool:
    """running → succeeded for exactly one caller; the row lock serialises contenders.

    The caller assembles the output inside the same transaction, so a crash mid-way
    rolls the claim back and a redelivered message assembles again.
    """
    claimed = _rowcount(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.SUCCEEDED, finished_at=utcnow()),
    )
    if claimed:
        # The assembly that follows may still fail the job (nothing kept): the outcome event
        # is written as this transaction commits, with the outcome it settled on.
        events.record_at_commit(session, partial(_record_outcome, job_id))
    return bool(claimed)


def _record_outcome(job_id: uuid.UUID, session: Session) -> None:  # at commit
    job = session.get(Job, job_id)
    if job is not None:
        events.record_outcome(session, job)


@contextmanager
def keeping_alive(
    db: Database, job_id: str, item_ids: Sequence[str], interval_s: float = KEEPALIVE_S
) -> Iterator[None]:
    """Touch the chunk's unsettled records every ``interval_s`` while the block runs (a
    chunk at work: loading its engine, calling it), so that a slow but live chunk is
    never taken for a lost one."""
    job = uuid.UUID(job_id)
    items = [uuid.UUID(i) for i in item_ids]
    stop = threading.Event()

    def touch() -> None:
        while not stop.wait(interval_s):
            try:
                with db.session() as session:
                    session.execute(
                        update(GenerationRecord)
                        .where(GenerationRecord.job_id == job, GenerationRecord.item_id.in_(items))
                        .where(GenerationRecord.status.not_in(RECORD_TERMINAL))
                        .values(updated_at=utcnow())
                    )
            except Exception as exc:  # the database is away for a moment; try next time
                log.warning("could not touch the records of job %s: %s", job_id, exc)

    thread = threading.Thread(target=touch, name="chunk-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class RecordFilter:
    status: str | None = None
    reason: str | None = None


def list_records(
    session: Session, *, job: Job, filters: RecordFilter, limit: int, offset: int
) -> tuple[list[tuple[GenerationRecord, Item]], int]:
    """A page of a coldstart job's records with their items, in dataset order, and the total."""
    query = (
        select(GenerationRecord, Item)
        .join(Item, Item.id == GenerationRecord.item_id)
        .where(GenerationRecord.job_id == job.id)
    )
    if filters.status is not None:
        query = query.where(GenerationRecord.status == filters.status)
    if filters.reason is not None:
        query = query.where(GenerationRecord.reject_reason == filters.reason)
    total = count_rows(session, query)
    rows = session.execute(query.order_by(Item.idx).limit(limit).offset(offset))
    return [(record, item) for record, item in rows], total


# How far each record step got, counted as the export's funnel counts it.
_DEPTH: dict[str, int] = {step: depth for depth, step in enumerate(RecordStep)}


def live_funnel(session: Session, job: Job) -> FunnelOut:
    """How many items got how far and why the others stopped, counted by the database now
    (the same figures as the funnel a finished job reports)."""
    record = GenerationRecord
    groups = session.execute(
        select(
            record.step,
            record.status,
            record.reject_reason,
            func.count(),
            func.count().filter(record.verdict.is_(True)),
        )
        .where(record.job_id == job.id)
        .group_by(record.step, record.status, record.reject_reason)
    ).all()
    reached = Counter[int]()
    by_status = {RecordStatus.REJECTED: Counter[str](), RecordStatus.FAILED: Counter[str]()}
    kept = verified = 0
    for step, status, reason, n, n_verified in groups:
        reached[_DEPTH.get(step, 0)] += n
        verified += n_verified
        kept += n if status == RecordStatus.KEPT else 0
        if status in by_status:
            by_status[RecordStatus(status)][reason or "unknown"] += n
    settled = kept + sum(by_status[RecordStatus.REJECTED].values())
    settled += sum(by_status[RecordStatus.FAILED].values())
    return FunnelOut(
        items_in=job.items_total,
        pending=job.items_total - settled,
        captioned=sum(n for depth, n in reached.items() if depth >= 1),
        described=sum(n for depth, n in reached.items() if depth >= 2),
        reasoned=sum(n for depth, n in reached.items() if depth >= 3),
        verified=verified,
        kept=kept,
        rejected=dict(by_status[RecordStatus.REJECTED]),
        failed=dict(by_status[RecordStatus.FAILED]),
        errors=_error_classes(session, job),
    )


def _error_classes(session: Session, job: Job) -> dict[str, int]:
    """Failed items by error: its class where it names one (``class: details``), else its
    first 80 characters."""
    head = func.substr(GenerationRecord.error, 1, 80)
    rows = session.execute(
        select(head, func.count())
        .where(GenerationRecord.job_id == job.id, GenerationRecord.status == RecordStatus.FAILED)
        .where(GenerationRecord.error.is_not(None))
        .group_by(head)
    ).all()
    classes = Counter[str]()
    for text, n in rows:
        name, sep, _details = text.partition(":")
        classes[name if sep and name.isidentifier() else text] += n
    return dict(classes)
