"""``vr1 worker embedded``: the work of a platform without a broker, in one process.

A gateway without a broker (``VR1_REDIS_URL`` empty, as on the embedded defaults and the
demo's home) writes each job's messages to the database's outbox and nothing else.  This
worker hands them to the services' handlers in its own process, as ``vr1 run`` does for
the one job it runs, and goes on doing so: a job submitted over HTTP, from the dashboard
or with ``vr1 jobs submit`` runs.  Training runs in a local process, as in ``vr1 run``;
the watcher relaunches one that died.

Work this worker held when it died (a message is taken off the outbox as it starts) is
found by the reconciling sweep it runs between messages: an unsettled coldstart item
that no outbox message names and nobody touched for ``stale_after_s``, a queued training
job with no run, a pipeline that did not move on (``shared.reconcile``).  One such worker
per database: it is the only one taking from that outbox.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from pydantic import Field

from entrypoints.bootstrap import Embedded, embedded
from entrypoints.reconciler import ReconcilerSettings
from shared.reconcile import outbox_in_flight, sweep

log = logging.getLogger(__name__)


class EmbeddedWorkerSettings(ReconcilerSettings):
    """The reconciler's intervals (how often it sweeps, when work counts as lost), and how
    often an idle worker looks at the outbox."""

    poll_interval_s: float = Field(default=1.0, gt=0, description="Idle: look this often.")


def work(platform: Embedded, settings: EmbeddedWorkerSettings, stop: threading.Event) -> None:
    """Messages as they come, and a sweep for lost work every ``reconcile_interval_s``,
    until ``stop`` is set; a failing pass is logged and the next one tries again."""
    swept = float("-inf")
    while not stop.is_set():
        handled = 0
        try:
            handled = platform.drain(stop=stop)
            if time.monotonic() - swept >= settings.reconcile_interval_s:
                swept = time.monotonic()
                in_flight = outbox_in_flight(platform.db)
                handled += sweep(
                    platform.db, in_flight, stale_after_s=settings.stale_after_s
                ).messages
        except Exception:  # a handler or the database failed: the sweep finds what was lost
            log.exception("embedded worker: a pass failed")
        if not handled:
            stop.wait(settings.poll_interval_s)


def main() -> None:
    """Run until SIGTERM or SIGINT (the message in hand is finished first; a second
    signal stops at once, and the sweep of the next start sends that work again)."""
    settings = EmbeddedWorkerSettings()
    logging.basicConfig(level=settings.log_level)
    if settings.redis_url:
        raise SystemExit(
            "VR1_REDIS_URL is set: run the queue workers (vr1 worker captioner|reasoner|"
            "trainer|reconciler) instead"
        )
    platform = embedded(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("embedded worker: stopping after the message in hand (again: at once)")
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    log.info(
        "embedded worker on %s: looking every %.0f s, lost after %.0f s",
        settings.resolved_database_url,
        settings.poll_interval_s,
        settings.stale_after_s,
    )
    work(platform, settings, stop)
