"""Captioner queue worker: ``vr1 worker captioner`` consumes the ``caption`` queue."""

from __future__ import annotations

from services.captioner.captioning import caption_chunk
from services.captioner.settings import CaptionerSettings
from shared import worker
from shared.coldstart import KEEPALIVE_S
from shared.contracts import queues
from shared.db.session import Database


def tasks(db: Database, keepalive_s: float = KEEPALIVE_S) -> worker.Tasks:
    """The captioner's task handlers by name."""

    def caption_batch(job_id: str, item_ids: list[str]) -> None:
        """Pseudo-CoT and description for a chunk, then on to the reasoner."""
        caption_chunk(db, job_id, item_ids, keepalive_s=keepalive_s)

    return {queues.CAPTION_BATCH: caption_batch}


def main() -> None:
    """Run the worker until stopped."""
    settings = CaptionerSettings()
    app, db, _store = worker.build(settings, "captioner")
    worker.register(app, tasks(db, settings.keepalive_s))
    worker.run(app, queues.CAPTION_QUEUE, settings)
