"""Run one cold-start step (an engine call per item) over a chunk, exactly once per item.

A step is described by a :class:`StepPlan`: which records need it, what prompt and
images each gets, and how an output is stored.  The runner reads the chunk, serves what
the cache already holds, counts a start on the rest, calls the engine for them outside
any transaction (a model call can take minutes), then stores outputs and failures in one
short transaction.

Retries live in the engine, which knows what is worth retrying (a 429, a 5xx, a dropped
connection) and how long to wait.  An error result is therefore final: the item is
settled as failed with its reason and the chunk goes on.  The job's ``max_attempts``
bounds something else: how many times a step may be *started* on an item, so an item
whose call kills its worker every time is given up after that many redeliveries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.coldstart import (
    cache_get,
    cache_key,
    cache_put,
    ensure_records,
    settle,
    start_attempts,
)
from shared.contracts.specs import EngineSpec
from shared.contracts.status import RECORD_TERMINAL, RecordStatus
from shared.db.models import GenerationRecord, Item, Job
from shared.db.session import Database
from shared.engines.base import Engine, GenerationRequest, GenerationResult
from shared.jobs import is_active
from shared.prompts import Template

Inputs = tuple[str, tuple[str, ...]]  # prompt text, image references


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
    record: GenerationRecord
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
        if record.status in RECORD_TERMINAL or not plan.needs(record):
            continue
        prompt, images = plan.inputs(record, item)
        key = cache_key(plan.step, plan.engine_spec, plan.template.version, prompt, images)
        prepared.append(_Prepared(record, item.id, prompt, images, key))
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
    with db.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        if job is None or not is_active(job):
            return False
        prepared = _prepare(session, job, item_ids, plan)
        cached = cache_get(session, (p.key for p in prepared))
        misses = [p for p in prepared if p.key not in cached]
        started = start_attempts(session, plan.step, [p.record for p in misses], max_attempts)
        started_ids = {record.id for record in started}
        misses = [p for p in misses if p.record.id in started_ids]
    if not prepared:
        return True
    params = plan.engine_spec.generation  # the engine is shared; each request carries its own
    requests = [GenerationRequest(p.prompt, p.images, params=params) for p in misses]
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
        loaded = _load(session, [p.record.id for p in prepared])
        for p in prepared:
            _store(session, plan, p, loaded.get(p.record.id), cached, fresh, errors)
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
) -> None:
    if loaded is None:
        return  # the item was deleted meanwhile
    record, item = loaded
    if record.status in RECORD_TERMINAL or not plan.needs(record):
        return  # settled meanwhile by a duplicate delivery
    record.prompt_versions = {**record.prompt_versions, plan.step: plan.template.version}
    output = fresh.get(prepared.key) or cached.get(prepared.key)
    if output is not None:
        usage = usage_entry(output, cached=prepared.key not in fresh)
        record.tokens = {**record.tokens, plan.step: usage}
        record.attempts = 0  # the next step starts counting afresh
        plan.apply(session, record, item, output)
        return
    failed = errors.get(prepared.key)
    if failed is None:
        return  # not started in this delivery (another delivery holds it)
    reason = f"{plan.step}_{failed.error_kind or 'engine_error'}"
    settle(session, record, RecordStatus.FAILED, reason=reason, error=f"{reason}: {failed.error}")
