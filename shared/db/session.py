"""The session helper: one place that commits or rolls back, and sends work after commit.

Work for the queues is registered on the session with :func:`enqueue_after_commit` and
handed to the dispatcher only once the transaction has committed; a rollback discards it.
A message can therefore never point at a row that does not exist.

A database without a dispatcher keeps its messages in the ``outbox`` table instead,
written in the sender's own transaction, so they exist exactly when the state that needs
them was committed; a relay (:func:`take_outbox`) hands them on later.  The embedded
runner is such a relay, and a training process started without a broker writes there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import OutboxMessage

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


def enqueue_after_commit(session: Session, task_name: str, args: list[Any]) -> None:
    """Send ``task_name(*args)`` once this session's transaction commits (without a
    dispatcher: write it to the outbox as part of this transaction)."""
    if session.info.get(_DISPATCHER) is None:
        session.add(OutboxMessage(task_name=task_name, args=args))
        return
    session.info.setdefault(_PENDING, []).append((task_name, args))


def take_outbox(session: Session, *, limit: int = 100) -> list[tuple[str, list[Any]]]:
    """The oldest outbox messages, removed from the table when the session commits."""
    rows = session.scalars(
        select(OutboxMessage)
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        session.delete(row)
    return [(row.task_name, list(row.args)) for row in rows]


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, [])
    dispatcher: Dispatcher | None = session.info.get(_DISPATCHER)
    if dispatcher is None:
        return
    for task_name, args in pending:
        dispatcher.send(task_name, args)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
