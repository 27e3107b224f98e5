"""Assembly of a finished coldstart job: the `cold` dataset, its exports, the funnel.

Exports, side by side in the artifact store under ``exports/<job id>/``, written by
``shared.cold_data`` in the one sharegpt form (``shared.contracts.sharegpt``):
- ``cold.json`` — LLaMA-Factory sharegpt rows (one ``<image>`` token per image, the
  assistant turn ``<think>…</think><answer>…</answer>``, images relative to the file),
  always written: it is the dataset SFT reads;
- ``dataset_info.json`` — the entry LLaMA-Factory needs to load it;
- ``cold.parquet`` — the same rows, when ``parquet`` is among the export formats;
- ``funnel.json`` — items in → captioned → described → reasoned → verified → kept,
  rejects and failures by reason, tokens by stage.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.cold_data import ColdSample, create_cold_dataset
from shared.contracts.sharegpt import assistant_turn
from shared.contracts.specs import ColdstartSpec
from shared.contracts.status import JobStatus, RecordStatus, RecordStep
from shared.db.models import Artifact, Dataset, GenerationRecord, Item, Job
from shared.jobs import notify_parent
from shared.storage import ArtifactStore

STEP_ORDER = (RecordStep.CAPTIONED, RecordStep.DESCRIBED, RecordStep.REASONED)


def funnel(records: list[GenerationRecord], items_in: int) -> dict[str, Any]:
    """How many items got how far, why the others stopped, and what it cost."""
    reached = Counter[str]()
    for record in records:
        depth = STEP_ORDER.index(record.step) + 1 if record.step in STEP_ORDER else 0
        for reached_step in STEP_ORDER[:depth]:
            reached[reached_step] += 1
    tokens: dict[str, dict[str, int]] = {}
    for record in records:
        for step, usage in record.tokens.items():
            total = tokens.setdefault(step, {"prompt": 0, "completion": 0, "cached_calls": 0})
            total["prompt"] += int(usage.get("prompt", 0))
            total["completion"] += int(usage.get("completion", 0))
            total["cached_calls"] += int(bool(usage.get("cached")))
    by_status = {
        status: Counter(r.reject_reason for r in records if r.status == status)
        for status in (RecordStatus.REJECTED, RecordStatus.FAILED)
    }
    return {
        "items_in": items_in,
        "captioned": reached[RecordStep.CAPTIONED],
        "described": reached[RecordStep.DESCRIBED],
        "reasoned": reached[RecordStep.REASONED],
        "verified": sum(1 for r in records if r.verdict),
        "kept": sum(1 for r in records if r.status == RecordStatus.KEPT),
        "rejected": dict(by_status[RecordStatus.REJECTED]),
        "failed": dict(by_status[RecordStatus.FAILED]),
        "tokens": tokens,
        "prompt_versions": sorted({json.dumps(r.prompt_versions, sort_keys=True) for r in records}),
    }


def _dataset_name(session: Session, job: Job, spec: ColdstartSpec) -> str:
    name = spec.output_name or f"cold-{str(job.id)[:8]}"
    taken = select(Dataset.id).where(Dataset.team_id == job.team_id, Dataset.name == name)
    return name if session.scalar(taken) is None else f"{name}-{str(job.id)[:8]}"


def _sample(store: ArtifactStore, record: GenerationRecord, item: Item) -> ColdSample:
    """A kept record as the training conversation it becomes, with the item's images."""
    return ColdSample(
        question=item.question,
        assistant=assistant_turn(record.reasoning or "", record.final_answer or ""),
        images=[store.local_path(uri) for uri in item.images],
        answer=item.answer,
        source_item_id=str(item.id),
    )


def assemble(session: Session, store: ArtifactStore, job: Job, spec: ColdstartSpec) -> None:
    """Write the exports, register the `cold` dataset and artifacts, finish the job.

    The caller has claimed the job's completion (it is already marked succeeded in this
    transaction); with nothing kept, the outcome is corrected to failed here."""
    records = list(
        session.scalars(select(GenerationRecord).where(GenerationRecord.job_id == job.id))
    )
    kept: list[tuple[GenerationRecord, Item]] = list(
        session.execute(
            select(GenerationRecord, Item)
            .join(Item, Item.id == GenerationRecord.item_id)
            .where(GenerationRecord.job_id == job.id, GenerationRecord.status == RecordStatus.KEPT)
            .order_by(Item.idx)
        ).all()
    )
    report = funnel(records, job.items_total)
    job.counters = report
    notify_parent(session, job)
    if not kept:
        job.status = JobStatus.FAILED
        job.error = f"no sample passed verification; funnel: {json.dumps(report)}"
        return
    prefix = f"exports/{job.id}"
    dataset = create_cold_dataset(
        session,
        store,
        team_id=job.team_id,
        name=_dataset_name(session, job, spec),
        prefix=prefix,
        samples=[_sample(store, record, item) for record, item in kept],
        parquet="parquet" in spec.export_formats,
        produced_by_job_id=job.id,
        meta={"source_dataset_id": spec.dataset_id, "funnel": report},
    )
    report_obj = store.put_bytes(json.dumps(report, indent=2).encode(), f"{prefix}/funnel.json")
    _register_artifacts(session, store, job, dataset.uri, report_obj.uri)
    job.output = {"dataset_id": str(dataset.id), "export_uri": dataset.uri, "funnel": report}


def _register_artifacts(
    session: Session, store: ArtifactStore, job: Job, export_uri: str, report_uri: str
) -> None:
    files = list(store.iter_files(export_uri))
    session.add(
        Artifact(
            team_id=job.team_id,
            job_id=job.id,
            kind="dataset_export",
            name=f"cold-{str(job.id)[:8]}",
            uri=export_uri,
            size_bytes=sum(p.stat().st_size for p in files),
            meta={"files": len(files)},
        )
    )
    session.add(
        Artifact(
            team_id=job.team_id,
            job_id=job.id,
            kind="report",
            name="funnel.json",
            uri=report_uri,
            size_bytes=store.local_path(report_uri).stat().st_size,
        )
    )
