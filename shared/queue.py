"""The Celery app factory and the dispatcher that sends work by task name.

JSON only, late acks (a task whose worker dies is delivered again), prefetch 1 (a slow
chunk never holds others hostage), one queue per domain.  Tasks are sent by name, so the
sender never imports the service that runs them.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.contracts.queues import QUEUES, TASK_QUEUES, queue_for


def make_celery(broker_url: str, *, name: str = "vr1", visibility_timeout_s: int = 1800) -> Celery:
    """A Celery app configured the same way in every process."""
    app = Celery(name, broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        task_queues=None,
        task_default_queue=QUEUES[0],
        broker_connection_retry_on_startup=True,
        # A message unacknowledged this long is handed out again; chunks are sized to
        # finish well inside it, and long training never sits inside one message.
        # kombu scans for such messages only on every 10th sweep (~100 s) by default;
        # scanning on every sweep brings a dead worker's message back soon after it expires.
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": min(10, max(1, visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
        },
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Workers reconnect to a restarted broker on their own, however long it takes.
        broker_connection_max_retries=None,
        # A send to a broker that is away fails within seconds: the message stays in the
        # outbox and the relay sends it later (a request never waits on the broker).
        broker_connection_timeout=2,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        enable_utc=True,
    )
    return app


class CeleryDispatcher:
    """Sends tasks by name through a Celery app, each to its own queue."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, task_name: str, args: list[Any]) -> None:
        self.app.send_task(task_name, args=args, queue=queue_for(task_name))
