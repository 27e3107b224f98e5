"""``vr1 worker reconciler``: the outbox relay and the reconciling sweep, on a timer.

Each pass first relays the outbox messages their senders could not hand to the broker,
then compares what the database says active jobs still need with what is in flight, and
resends the difference (``shared.reconcile``).  Any number of replicas may run: the
relay skips rows another replica holds, and one sweep runs at a time.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

from celery import Celery
from pydantic import Field

from shared.db.session import Database, relay_outbox
from shared.queue import CeleryDispatcher, make_celery
from shared.reconcile import Resent, broker_in_flight, sweep
from shared.worker import WorkerSettings

log = logging.getLogger(__name__)


class ReconcilerSettings(WorkerSettings):
    """The reconciler: how often it looks, and when unfinished work counts as lost."""

    reconcile_interval_s: float = Field(default=10.0, gt=0)
    stale_after_s: float = Field(
        default=60.0, gt=0, description="Untouched this long and held by nobody: lost."
    )
    outbox_grace_s: float = Field(
        default=5.0, ge=0, description="A sender's own attempt comes first for this long."
    )


@dataclass
class Pass:
    relayed: int
    resent: Resent


class Reconciler:
    """One relay-and-sweep pass at a time."""

    def __init__(self, settings: ReconcilerSettings, app: Celery, db: Database) -> None:
        self.settings, self.app, self.db = settings, app, db
        self.dispatcher = CeleryDispatcher(app)

    def run_once(self) -> Pass:
        """Relay the outbox, then sweep for lost work."""
        relayed = relay_outbox(self.db, self.dispatcher, grace_s=self.settings.outbox_grace_s)
        in_flight = broker_in_flight(self.app)
        resent = sweep(self.db, in_flight, stale_after_s=self.settings.stale_after_s)
        return Pass(relayed, resent)

    def run_forever(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged, not fatal."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                done = self.run_once()
                if done.relayed:
                    log.info("reconciler: relayed %d outbox messages", done.relayed)
            except Exception:  # the database or broker is away: the next pass retries
                log.exception("reconciler pass failed")
            stop.wait(max(0.0, self.settings.reconcile_interval_s - (time.monotonic() - started)))


def main() -> None:
    """Run the reconciler until SIGTERM or SIGINT."""
    settings = ReconcilerSettings()
    logging.basicConfig(level=settings.log_level)
    if not settings.redis_url:
        raise SystemExit("the reconciler needs a broker: set VR1_REDIS_URL")
    app = make_celery(settings.redis_url, visibility_timeout_s=settings.visibility_timeout_s)
    db = Database(settings.resolved_database_url, CeleryDispatcher(app))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("reconciler: every %.0f s, lost after %.0f s", settings.reconcile_interval_s,
             settings.stale_after_s)  # fmt: skip
    Reconciler(settings, app, db).run_forever(stop)
