"""Reasoner queue worker: ``vr1 worker reasoner`` consumes the ``reason`` queue."""

from __future__ import annotations

from services.reasoner.reasoning import reason_chunk
from services.reasoner.settings import ReasonerSettings
from shared import worker
from shared.coldstart import KEEPALIVE_S
from shared.contracts import queues
from shared.db.session import Database
from shared.storage import ArtifactStore


def tasks(db: Database, store: ArtifactStore, keepalive_s: float = KEEPALIVE_S) -> worker.Tasks:
    """The reasoner's task handlers by name."""

    def reason_batch(job_id: str, item_ids: list[str]) -> None:
        """Reason, verify and settle a chunk; the last one assembles the dataset."""
        reason_chunk(db, store, job_id, item_ids, keepalive_s=keepalive_s)

    return {queues.REASON_BATCH: reason_batch}


def main() -> None:
    """Run the worker until stopped."""
    settings = ReasonerSettings()
    app, db, store = worker.build(settings, "reasoner")
    worker.register(app, tasks(db, store, settings.keepalive_s))
    worker.run(app, queues.REASON_QUEUE, settings)
