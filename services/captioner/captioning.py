"""The captioner's two calls per item: Pseudo-CoT, then the detailed description.

1. Pseudo-CoT: image + question + gold answer → a caption and step-by-step reasoning.
2. Description: image + question + that Pseudo-CoT → a purely textual, detailed
   description holding every detail needed to answer (the Pseudo-CoT tells the
   describer what to look at).
Both are stored on the item's record; the chunk then goes on to the reasoner.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from shared.coldstart import KEEPALIVE_S, ensure_records, keeping_alive, load_job, settle
from shared.contracts import queues
from shared.contracts.specs import ColdstartSpec
from shared.contracts.status import RECORD_TERMINAL, RecordStatus, RecordStep
from shared.db.models import GenerationRecord, Item
from shared.db.session import Database, enqueue_after_commit
from shared.engines import Engine, engine_for
from shared.generation import StepPlan, run_step
from shared.jobs import is_active, mark_running
from shared.prompts import template_for


def _store_pseudo_cot(
    _session: Session, record: GenerationRecord, _item: Item, output: dict[str, Any]
) -> None:
    record.pseudo_cot = output["text"].strip()
    record.step = RecordStep.CAPTIONED
    record.latency = {**record.latency, "pseudo_cot": output.get("latency_s", 0.0)}


def _store_description(
    _session: Session, record: GenerationRecord, _item: Item, output: dict[str, Any]
) -> None:
    record.description = output["text"].strip()
    record.step = RecordStep.DESCRIBED
    record.latency = {**record.latency, "description": output.get("latency_s", 0.0)}


def fail_unusable_items(session: Session, job_id: uuid.UUID, item_ids: list[str]) -> None:
    """Settle items no model call can help as failed, each with its reason."""
    for record, item in ensure_records(session, job_id, item_ids):
        if record.status in RECORD_TERMINAL:
            continue
        if not item.question.strip():
            error = "the question is empty"
            settle(session, record, RecordStatus.FAILED, reason="empty_question", error=error)
        elif not item.images:
            error = "the item has no image"
            settle(session, record, RecordStatus.FAILED, reason="no_image", error=error)


def plans(spec: ColdstartSpec) -> list[StepPlan]:
    """The captioner's two steps, in order."""
    pseudo = template_for("pseudo_cot", spec.prompts.pseudo_cot)
    described = template_for("description", spec.prompts.description)
    return [
        StepPlan(
            step="pseudo_cot",
            engine_spec=spec.captioner,
            template=pseudo,
            needs=lambda r: r.step == RecordStep.PENDING,
            inputs=lambda r, i: (
                pseudo.render(question=i.question, answer=i.answer),
                tuple(i.images),
            ),
            apply=_store_pseudo_cot,
        ),
        StepPlan(
            step="description",
            engine_spec=spec.captioner,
            template=described,
            needs=lambda r: r.step == RecordStep.CAPTIONED,
            inputs=lambda r, i: (
                described.render(question=i.question, pseudo_cot=r.pseudo_cot or ""),
                tuple(i.images),
            ),
            apply=_store_description,
        ),
    ]


def caption_chunk(
    db: Database,
    job_id: str,
    item_ids: list[str],
    *,
    engine: Engine | None = None,
    keepalive_s: float = KEEPALIVE_S,
) -> None:
    """Pseudo-CoT and description for a chunk of items, then hand it to the reasoner."""
    with db.session() as session:
        job, spec = load_job(session, job_id)
        if not is_active(job):
            return
        mark_running(session, job.id)
        fail_unusable_items(session, job.id, item_ids)
    with keeping_alive(db, job_id, item_ids, keepalive_s):
        engine = engine or engine_for(spec.captioner)  # built once per process, then shared
        for plan in plans(spec):
            kept_going = run_step(
                db,
                job_id=job_id,
                item_ids=item_ids,
                plan=plan,
                engine=engine,
                max_attempts=spec.max_attempts,
            )
            if not kept_going:
                return
    with db.session() as session:
        enqueue_after_commit(session, queues.REASON_BATCH, [job_id, item_ids])
