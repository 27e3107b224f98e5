"""Run one cold-start step (an engine call per item) over a chunk, exactly once per item.

A step is described by a :class:`StepPlan`: which records need it, what prompt and
images each gets, and how an output is stored.  The runner reads the chunk, serves what
the cache already holds, calls the engine for the rest outside any transaction (a model
call can take minutes), then stores outputs and failures in one short transaction.
Items that failed are tried again, up to the job's attempt limit; then they are settled
as failed with their reason and the chunk goes on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.coldstart import (
    TERMINAL,
    cache_get,
    cache_key,
    cache_put,
    ensure_records,
    is_active,
    record_attempt_failure,
)
from shared.contracts.specs import EngineSpec
from shared.db.models import GenerationRecord, Item, Job
from shared.db.session import Database
from shared.engines.base import Engine, GenerationRequest, GenerationResult
from shared.prompts import Template

Inputs = tuple[str, tuple[str, ...]]  # prompt text, image references
# Failures that come from the item itself: asking again cannot change the answer.
PERMANENT_ERRORS = frozenset({"image_unreadable", "image_too_large", "images_unsupported"})


@dataclass(frozen=True)
class StepPlan:
    """What one step does to a record."""

    step: str
    engine_spec: EngineSpec
    template: Template
    needs: Callable[[GenerationRecord], bool]
    inputs: Callable[[GenerationRecord, Item], Inputs]
    apply: Callable[[Session, GenerationRecord, Item, dict[str, Any]], None]


@dataclass(frozen=True)
class _Prepared:
    record_id: int
    item_id: uuid.UUID
    prompt: str
    images: tuple[str, ...]
    key: str


def output_of(result: GenerationResult) -> dict[str, Any]:
    """The JSON kept for a successful engine call (in the cache and on the record)."""
    return {
        "text": result.text,
        "reasoning": result.reasoning,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_s": round(result.latency_s, 4),
        "attempts": result.attempts,
    }


def usage_entry(output: dict[str, Any], *, cached: bool) -> dict[str, Any]:
    """A step's cost as stored on the record; a cache hit cost nothing this time."""
    return {
        "prompt": output.get("prompt_tokens", 0),
        "completion": output.get("completion_tokens", 0),
        "latency_s": output.get("latency_s", 0.0),
        "cached": cached,
        "calls": 0 if cached else output.get("attempts", 1),  # retried calls count each
    }


def _prepare(session: Session, job: Job, item_ids: list[str], plan: StepPlan) -> list[_Prepared]:
    prepared = []
    for record, item in ensure_records(session, job.id, item_ids):
        if record.status in TERMINAL or not plan.needs(record):
            continue
        prompt, images = plan.inputs(record, item)
        key = cache_key(plan.step, plan.engine_spec, plan.template.version, prompt, images)
        prepared.append(_Prepared(record.id, item.id, prompt, images, key))
    return prepared


def run_step(
    db: Database,
    *,
    job_id: str,
    item_ids: list[str],
    plan: StepPlan,
    engine: Engine,
    max_attempts: int,
) -> bool:
    """Bring every record of the chunk through one step; False if the job stopped."""
    for _ in range(max_attempts):
        with db.session() as session:
            job = session.get(Job, uuid.UUID(job_id))
            if job is None or not is_active(job):
                return False
            prepared = _prepare(session, job, item_ids, plan)
            cached = cache_get(session, (p.key for p in prepared))
        if not prepared:
            return True
        misses = [p for p in prepared if p.key not in cached]
        requests = [GenerationRequest(prompt=p.prompt, images=p.images) for p in misses]
        results = engine.generate(requests) if requests else []
        with db.session() as session:
            fresh: dict[str, dict[str, Any]] = {}
            errors: dict[str, GenerationResult] = {}
            for p, result in zip(misses, results, strict=True):
                if result.ok:
                    fresh[p.key] = output_of(result)
                else:
                    errors[p.key] = result
            cache_put(session, plan.step, fresh)
            loaded = _load(session, [p.record_id for p in prepared])
            for p in prepared:
                _store(
                    session, plan, p, loaded.get(p.record_id), cached, fresh, errors, max_attempts
                )
        if not errors:
            return True  # nothing left to try again
    return True


def _load(session: Session, record_ids: list[int]) -> dict[int, tuple[GenerationRecord, Item]]:
    """Records with their items, by record ID, in one query."""
    rows = session.execute(
        select(GenerationRecord, Item)
        .join(Item, Item.id == GenerationRecord.item_id)
        .where(GenerationRecord.id.in_(record_ids))
    ).all()
    return {record.id: (record, item) for record, item in rows}


def _store(
    session: Session,
    plan: StepPlan,
    prepared: _Prepared,
    loaded: tuple[GenerationRecord, Item] | None,
    cached: dict[str, dict[str, Any]],
    fresh: dict[str, dict[str, Any]],
    errors: dict[str, GenerationResult],
    max_attempts: int,
) -> None:
    if loaded is None:
        return  # the item was deleted meanwhile
    record, item = loaded
    if record.status in TERMINAL or not plan.needs(record):
        return  # settled meanwhile by a duplicate delivery
    record.prompt_versions = {**record.prompt_versions, plan.step: plan.template.version}
    output = fresh.get(prepared.key) or cached.get(prepared.key)
    if output is not None:
        usage = usage_entry(output, cached=prepared.key not in fresh)
        record.tokens = {**record.tokens, plan.step: usage}
        plan.apply(session, record, item, output)
        return
    failed = errors[prepared.key]
    reason = f"{failed.error_kind or 'engine_error'}: {failed.error}"
    if failed.error_kind in PERMANENT_ERRORS:
        max_attempts = 1
    record_attempt_failure(
        session, record, reason=f"{plan.step}_{reason}", max_attempts=max_attempts
    )
