"""A job's event log follows commit order on PostgreSQL: a reader that polls with
``after`` = the last ID it saw never skips an event, even when two transactions write
events of the same job at once and the one that started first commits last."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from shared import events
from shared.db.models import Job, JobEvent, Team
from shared.db.session import Database
from shared.events import EventFilter, EventType

pytestmark = pytest.mark.integration


@pytest.fixture
def job(pg_migrated: str) -> Iterator[tuple[Database, uuid.UUID]]:
    db = Database(pg_migrated)
    with db.session() as session:
        team = Team(name=f"order-{uuid.uuid4().hex[:8]}")
        session.add(team)
        session.flush()
        row = Job(team_id=team.id, kind="grpo", spec={})
        session.add(row)
        session.flush()
        job_id = row.id
    yield db, job_id
    db.engine.dispose()


def _messages(db: Database, job_id: uuid.UUID, after: int | None) -> list[tuple[int, str]]:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        rows, _ = events.list_events(
            session, job=job, filters=EventFilter(after=after), limit=100, offset=0
        )
        return [(e.id, e.message) for e in rows]


def test_a_follower_misses_no_event_when_commits_cross(job: tuple[Database, uuid.UUID]) -> None:
    db, job_id = job
    inserted, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow() -> None:
        """Writes its event, then stalls between the insert and the commit."""
        session = db.factory()

        @event.listens_for(session, "after_flush")
        def stall(flushed: Session, _context: Any) -> None:
            if any(isinstance(o, JobEvent) for o in flushed.new):
                inserted.set()
                release.wait(timeout=30)

        try:
            events.record(session, job_id, EventType.INFO, "first in, last out")
            session.commit()
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)
        finally:
            session.close()

    def fast() -> None:
        try:
            with db.session() as session:
                events.record(session, job_id, EventType.INFO, "second in")
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=slow)
    first.start()
    assert inserted.wait(timeout=30), "the slow writer never flushed its event"
    second = threading.Thread(target=fast)
    second.start()
    second.join(timeout=1.0)  # without ordering it commits at once, ahead of the first

    seen = _messages(db, job_id, after=None)  # a follower polls while the first stalls
    cursor = max((i for i, _ in seen), default=None)
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert not errors, errors
    seen += _messages(db, job_id, after=cursor)

    assert [m for _, m in seen] == ["first in, last out", "second in"]
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)


def test_events_of_a_rolled_back_savepoint_or_transaction_are_not_written(
    job: tuple[Database, uuid.UUID],
) -> None:
    db, job_id = job
    with db.session() as session:
        events.record(session, job_id, EventType.INFO, "kept")
        try:
            with session.begin_nested():
                events.record(session, job_id, EventType.INFO, "undone with its savepoint")
                raise RuntimeError("the savepoint's work fails")
        except RuntimeError:
            pass
        with session.begin_nested():
            events.record(session, job_id, EventType.INFO, "kept from a released savepoint")
    session = db.factory()
    events.record(session, job_id, EventType.INFO, "undone with its transaction")
    session.rollback()
    session.commit()  # the same session's next commit does not bring it back
    session.close()

    assert [m for _, m in _messages(db, job_id, after=None)] == [
        "kept",
        "kept from a released savepoint",
    ]
