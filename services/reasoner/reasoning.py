"""The reasoner: reasoning call per item, then verification and post-processing.

The text reasoning model sees the description, the question, the gold answer and the
instruction, and returns a long CoT and a final answer.  Each result is then judged as
the training sample it would become — ``<think>CoT</think><answer>answer</answer>``
scored by the HFRRF rule — and kept only if the format and the answer are right and the
CoT's own conclusion agrees with the answer.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from services.reasoner.export import assemble
from services.reasoner.postprocess import Candidate, precheck, rewrite_wording
from shared.coldstart import (
    KEEPALIVE_S,
    Outcome,
    all_settled,
    claim_completion,
    ensure_records,
    keeping_alive,
    load_job,
    settle_many,
)
from shared.contracts.sharegpt import assistant_turn
from shared.contracts.specs import ColdstartFilters, ColdstartSpec
from shared.contracts.status import RECORD_TERMINAL, RecordStatus, RecordStep
from shared.db.models import GenerationRecord, Item
from shared.db.session import Database
from shared.engines import Engine, engine_for
from shared.generation import StepPlan, run_step
from shared.jobs import is_active
from shared.prompts import template_for
from shared.rewards import (
    ScoreItem,
    Scorer,
    ScoreResult,
    consistency,
    default_scorer,
    extract_final_answer,
    score,
)
from shared.storage import ArtifactStore


def _store_reasoning(
    _session: Session, record: GenerationRecord, _item: Item, output: dict[str, Any]
) -> None:
    content = output.get("text") or ""
    record.reasoning = (output.get("reasoning") or "").strip()
    record.final_answer = extract_final_answer(content)
    record.step = RecordStep.REASONED
    record.latency = {**record.latency, "reasoning": output.get("latency_s", 0.0)}
    record.tokens = {
        **record.tokens,
        "reasoning": {**record.tokens.get("reasoning", {}), "finish": output.get("finish_reason")},
    }


def plan(spec: ColdstartSpec) -> StepPlan:
    """The reasoning step: description + question + gold answer + instruction."""
    template = template_for("reasoning", spec.prompts.reasoning)
    return StepPlan(
        step="reasoning",
        engine_spec=spec.reasoner,
        template=template,
        needs=lambda r: r.step == RecordStep.DESCRIBED,
        inputs=lambda r, i: (
            template.render(description=r.description or "", question=i.question, answer=i.answer),
            (),
        ),
        apply=_store_reasoning,
    )


def _candidate(record: GenerationRecord) -> Candidate:
    finish = (record.tokens.get("reasoning") or {}).get("finish") or ""
    return Candidate(record.reasoning or "", record.final_answer or "", finish)


def _outcome(
    result: ScoreResult, turn: str, filters: ColdstartFilters
) -> tuple[str, str | None, str | None]:
    """Kept, or rejected with a reason and details, for one scored sample."""
    rejected = RecordStatus.REJECTED
    if result.reward is None:
        return (rejected, "no_verdict", result.reason)
    if not result.format_ok:
        return (rejected, "bad_format", result.reason)
    if not result.answer_ok:
        return (rejected, "wrong_answer", result.extracted)
    if filters.reject_inconsistent and consistency(turn) is False:
        return (rejected, "inconsistent", None)
    return (RecordStatus.KEPT, None, None)


def judge(
    session: Session,
    spec: ColdstartSpec,
    records: list[tuple[GenerationRecord, Item]],
    scorer: Scorer,
) -> None:
    """Settle every reasoned record: kept, or rejected with its reason."""
    filters = spec.filters
    outcomes: list[Outcome] = []
    pending: list[tuple[GenerationRecord, Item, str]] = []
    for record, item in records:
        candidate = _candidate(record)
        reason = precheck(
            candidate, max_cot_chars=filters.max_cot_chars, reject_leaks=filters.reject_answer_leaks
        )
        if reason:
            outcomes.append((record, RecordStatus.REJECTED, reason, None))
            continue
        cot = (
            rewrite_wording(candidate.cot) if filters.rewrite_description_wording else candidate.cot
        )
        record.reasoning = cot
        pending.append((record, item, assistant_turn(cot, candidate.final_answer)))
    items = [ScoreItem(completion=turn, answer=item.answer) for _, item, turn in pending]
    results = score("hfrrf", items, scorer=scorer) if items else []
    for (record, _item, turn), result in zip(pending, results, strict=True):
        record.verdict = result.answer_ok
        outcomes.append((record, *_outcome(result, turn, filters)))
    if outcomes:
        settle_many(session, outcomes)


def reason_chunk(
    db: Database,
    store: ArtifactStore,
    job_id: str,
    item_ids: list[str],
    *,
    engine: Engine | None = None,
    scorer: Scorer | None = None,
    keepalive_s: float = KEEPALIVE_S,
) -> None:
    """Reason, verify and settle a chunk; the last chunk to finish assembles the dataset."""
    with db.session() as session:
        job, spec = load_job(session, job_id)
        if not is_active(job):
            return
    with keeping_alive(db, job_id, item_ids, keepalive_s):
        kept_going = run_step(
            db,
            job_id=job_id,
            item_ids=item_ids,
            plan=plan(spec),
            engine=engine or engine_for(spec.reasoner),  # built once per process, then shared
            max_attempts=spec.max_attempts,
        )
        if not kept_going:
            return
        with db.session() as session:
            job, spec = load_job(session, job_id)
            records = [
                (r, i)
                for r, i in ensure_records(session, job.id, item_ids)
                if r.status not in RECORD_TERMINAL and r.step == RecordStep.REASONED
            ]
            judge(session, spec, records, scorer or default_scorer())
    finish_if_complete(db, store, job_id)


def finish_if_complete(db: Database, store: ArtifactStore, job_id: str) -> bool:
    """Assemble the output once every item is settled; exactly one caller does it."""
    with db.session() as session:
        job, spec = load_job(session, job_id)
        if not is_active(job) or not all_settled(session, job):
            return False
        if not claim_completion(session, uuid.UUID(job_id)):
            return False
        session.refresh(job)
        assemble(session, store, job, spec)
    return True
