"""The session helper: one place that commits or rolls back, and sends work after commit.

Work for the queues is a transactional outbox: :func:`enqueue_after_commit` writes each
message into the ``outbox`` table in the caller's own transaction, so a message exists
exactly when the state that needs it was committed (a rollback discards both).  Once the
transaction has committed, the messages are handed to the dispatcher at once and their
rows deleted; a message the broker did not take (it is down, or restarting) stays in the
table, and a relay (:func:`relay_outbox`, run by the reconciler) delivers it later.  A
message is thus never lost; it may rarely be delivered twice (sent, then the delete
failed), which the task handlers are written to absorb (every write is idempotent).

A database without a dispatcher only writes the outbox; the embedded runner is its
relay (:func:`take_outbox`), and a training process started without a broker writes there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, Select, create_engine, delete, event, func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import OutboxMessage, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")
# The database is unreachable for a moment (a restart, a failover, a network blip).
UNREACHABLE = (OperationalError, InterfaceError)
_PENDING = "vr1_pending_tasks"
_DISPATCHER = "vr1_dispatcher"


class Dispatcher(Protocol):
    """Sends a task by name to its queue (Celery in cluster mode)."""

    def send(self, task_name: str, args: list[Any]) -> None: ...


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for PostgreSQL or SQLite with the settings the platform relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


class Database:
    """An engine, a session factory and the dispatcher that after-commit work goes to
    (none: messages are written to the outbox table)."""

    def __init__(self, url: str, dispatcher: Dispatcher | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.factory = sessionmaker(self.engine, expire_on_commit=False)
        self.dispatcher = dispatcher

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commit at the end, roll back on any error."""
        session = self.factory()
        session.info[_DISPATCHER] = self.dispatcher
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def count_rows(session: Session, query: Select[*tuple[Any, ...]]) -> int:
    """How many rows ``query`` matches: the total beside one page of it."""
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def enqueue_after_commit(session: Session, task_name: str, args: list[Any]) -> None:
    """Send ``task_name(*args)`` once this session's transaction commits: the message is
    written to the outbox in this transaction, and sent right after it commits."""
    message = OutboxMessage(task_name=task_name, args=args)
    session.add(message)
    if session.info.get(_DISPATCHER) is not None:
        session.info.setdefault(_PENDING, []).append(message)


def take_outbox(session: Session, *, limit: int = 100) -> list[tuple[str, list[Any]]]:
    """The oldest outbox messages, removed from the table when the session commits."""
    rows = _oldest(session, limit=limit, grace_s=0.0)
    for row in rows:
        session.delete(row)
    return [(row.task_name, list(row.args)) for row in rows]


def relay_outbox(db: Database, dispatcher: Dispatcher, *, grace_s: float = 10.0) -> int:
    """Send the outbox messages that their senders could not (older than ``grace_s``: the
    sender's own attempt comes first); returns how many the broker took.  Stops at the
    first refusal (the broker is still away) and keeps what was not sent."""
    sent = 0
    while True:
        with db.session() as session:
            rows = _oldest(session, limit=100, grace_s=grace_s)
            for row in rows:
                try:
                    dispatcher.send(row.task_name, list(row.args))
                except Exception as exc:  # the broker refused: try again on the next pass
                    log.warning("outbox: the broker did not take %s: %s", row.task_name, exc)
                    return sent
                session.delete(row)
                session.flush()
                sent += 1
        if len(rows) < 100:
            return sent


def _oldest(session: Session, *, limit: int, grace_s: float) -> list[OutboxMessage]:
    query = select(OutboxMessage).order_by(OutboxMessage.id).limit(limit)
    if grace_s > 0:
        query = query.where(OutboxMessage.created_at < utcnow() - timedelta(seconds=grace_s))
    return list(session.scalars(query.with_for_update(skip_locked=True)))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    pending: list[OutboxMessage] = session.info.pop(_PENDING, [])
    dispatcher: Dispatcher | None = session.info.get(_DISPATCHER)
    if dispatcher is None or not pending:
        return
    sent: list[int] = []
    for message in pending:
        try:
            dispatcher.send(message.task_name, list(message.args))
        except Exception as exc:  # the broker is away: the relay sends these later
            log.warning("broker unavailable, %s waits in the outbox: %s", message.task_name, exc)
            break
        sent.append(message.id)
    if sent:
        try:
            bind = session.get_bind()
            engine = bind if isinstance(bind, Engine) else bind.engine
            with engine.connect() as connection:
                connection.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(sent)))
                connection.commit()
        except Exception as exc:  # the relay will send them again; handlers absorb that
            log.warning("could not clear %d sent outbox messages: %s", len(sent), exc)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def outlasting(work: Callable[[], T], *, within_s: float, what: str = "a database call") -> T:
    """``work()``, run again after a growing pause (0.5 s doubling to 15 s) while the
    database is unreachable, for up to ``within_s``; then the last error is raised.  For
    long-lived processes (a training run) that should wait out an outage, not die of it;
    ``work`` must be safe to repeat (its transaction rolled back)."""
    deadline = time.monotonic() + within_s
    pause = 0.5
    while True:
        try:
            return work()
        except UNREACHABLE as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the database is unreachable (%s); again in %.1f s", what, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 15.0)
