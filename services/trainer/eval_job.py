"""An eval job's datasets, evaluated a chunk of rows at a time.

Each chunk (``write_every`` rows) is generated, judged and stored in one transaction, so
the job's progress (its stored results) moves while it runs, and a run started again
after a crash keeps the chunks stored before it and evaluates only the rest.  Chunks are
cut the same way on every launch and each is sampled on its own, so a resumed job ends
with the results an uninterrupted one would have.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.trainer.data import EvalRow
from services.trainer.evaluation import EvalItem, EvalSummary, evaluate, summarize
from services.trainer.inputs import prompt_rows
from services.trainer.tracking import Tracker
from shared.contracts.specs import EvalSpec
from shared.db.models import Dataset, EvalResult
from shared.engines import Engine
from shared.rewards import check_format

Table = dict[str, dict[str, float | int]]


def evaluate_datasets(tracker: Tracker, spec: EvalSpec, engine: Engine) -> Table:
    """A table row per dataset (accuracy, format rate, missing answers, resampled, n);
    every item's completion and verdict stored."""
    table: Table = {}
    for dataset_id in spec.dataset_ids:
        rows = prompt_rows(tracker.db, tracker.store, dataset_id)
        summary = _evaluate_dataset(tracker, spec, engine, uuid.UUID(dataset_id), rows)
        with tracker.db.session() as session:
            dataset = session.get(Dataset, uuid.UUID(dataset_id))
            label = dataset.name if dataset else dataset_id
        table[label] = {
            "accuracy": summary.accuracy,
            "format_rate": summary.format_rate,
            "missing_answer_rate": summary.missing_answer_rate,
            "resampled": summary.resampled,
            "n": summary.n,
        }
        tracker.log(
            0, len(table), {"accuracy": summary.accuracy, "format_rate": summary.format_rate}
        )
    return table


def _evaluate_dataset(
    tracker: Tracker, spec: EvalSpec, engine: Engine, dataset_id: uuid.UUID, rows: list[EvalRow]
) -> EvalSummary:
    rows = rows[: spec.limit] if spec.limit else rows
    stored = _stored(tracker, dataset_id)
    items: list[EvalItem] = []
    for start in range(0, len(rows), spec.write_every):
        chunk = rows[start : start + spec.write_every]
        kept = [stored.get(str(row.id)) for row in chunk]
        if all(result is not None for result in kept):  # stored by an earlier launch
            items += [_item(start + i, r) for i, r in enumerate(kept) if r is not None]
            continue
        summary = evaluate(Path(spec.model), chunk, spec, engine=engine)
        judged = [replace(item, index=start + item.index) for item in summary.items]
        tracker.in_session(
            partial(_store, tracker=tracker, dataset_id=dataset_id, items=judged), "eval results"
        )
        items += judged
    return summarize(items)


def _stored(tracker: Tracker, dataset_id: uuid.UUID) -> dict[str, EvalResult]:
    """The results an earlier launch of this job stored for the dataset, by item ID."""
    query = select(EvalResult).where(
        EvalResult.job_id == tracker.job_id, EvalResult.dataset_id == dataset_id
    )
    with tracker.db.session() as session:
        return {str(r.item_id): r for r in session.scalars(query)}


def _store(
    session: Session, *, tracker: Tracker, dataset_id: uuid.UUID, items: Sequence[EvalItem]
) -> None:
    ids = [uuid.UUID(str(item.id)) for item in items]
    # A chunk half-stored cannot happen (one transaction); rows of these items that an
    # earlier launch stored all the same are replaced, never doubled.
    session.execute(
        delete(EvalResult).where(EvalResult.job_id == tracker.job_id, EvalResult.item_id.in_(ids))
    )
    session.add_all(
        EvalResult(
            job_id=tracker.job_id,
            dataset_id=dataset_id,
            item_id=item_id,
            label="",
            tries=item.tries,
            completion=item.completion,
            extracted=item.extracted,
            correct=item.correct,
            reason=_reason(item),
        )
        for item_id, item in zip(ids, items, strict=True)
    )


def _item(index: int, result: EvalResult) -> EvalItem:
    """A stored result as the item it was judged from (its format is read again from the
    completion, by the same rule)."""
    failed = result.reason not in (None, "bad_format")
    return EvalItem(
        index=index,
        id=str(result.item_id),
        completion=result.completion,
        extracted=result.extracted or "",
        correct=result.correct,
        format_ok=check_format(result.completion).ok,
        tries=result.tries,
        error=result.reason if failed else None,
    )


def _reason(item: EvalItem) -> str | None:
    """Why an item is not simply judged: the engine failed on it, or its format is bad."""
    if item.error is not None:
        return item.error.split(":", 1)[0][:64]
    return None if item.format_ok else "bad_format"
