"""Assembly of a finished coldstart job: the `cold` dataset, its exports, the funnel.

Exports, side by side in the artifact store under ``exports/<job id>/``:
- ``cold.json`` — LLaMA-Factory sharegpt rows: the user turn is one ``<image>`` token per
  image followed by the question, the assistant turn ``<think>…</think><answer>…</answer>``,
  ``images`` a list of paths relative to the file (their count always equals the number
  of ``<image>`` tokens — LLaMA-Factory's most common data error);
- ``dataset_info.json`` — the entry LLaMA-Factory needs to load it;
- ``cold.parquet`` — the same rows;
- ``funnel.json`` — items in → captioned → described → reasoned → verified → kept,
  rejects and failures by reason, tokens by stage.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.reasoner.postprocess import assistant_turn
from shared.contracts import queues
from shared.contracts.specs import ColdstartSpec
from shared.db.models import Artifact, Dataset, GenerationRecord, Item, Job
from shared.db.session import enqueue_after_commit
from shared.storage import ArtifactStore

IMAGE_TOKEN = "<image>"
_IMAGE_TOKEN = re.compile(re.escape(IMAGE_TOKEN) + r"\s*")
STEP_ORDER = ("captioned", "described", "reasoned")


def user_turn(question: str, n_images: int) -> str:
    """One <image> token per image, then the question (tokens already in it are moved)."""
    return IMAGE_TOKEN * n_images + _IMAGE_TOKEN.sub("", question).strip()


def funnel(records: list[GenerationRecord], items_in: int) -> dict[str, Any]:
    """How many items got how far, why the others stopped, and what it cost."""
    reached = Counter[str]()
    for record in records:
        depth = STEP_ORDER.index(record.step) + 1 if record.step in STEP_ORDER else 0
        for step in STEP_ORDER[:depth]:
            reached[step] += 1
    tokens: dict[str, dict[str, int]] = {}
    for record in records:
        for step, usage in record.tokens.items():
            total = tokens.setdefault(step, {"prompt": 0, "completion": 0, "cached_calls": 0})
            total["prompt"] += int(usage.get("prompt", 0))
            total["completion"] += int(usage.get("completion", 0))
            total["cached_calls"] += int(bool(usage.get("cached")))
    return {
        "items_in": items_in,
        "captioned": reached["captioned"],
        "described": reached["described"],
        "reasoned": reached["reasoned"],
        "verified": sum(1 for r in records if r.verdict),
        "kept": sum(1 for r in records if r.status == "kept"),
        "rejected": dict(Counter(r.reject_reason for r in records if r.status == "rejected")),
        "failed": dict(Counter(r.reject_reason for r in records if r.status == "failed")),
        "tokens": tokens,
        "prompt_versions": sorted({json.dumps(r.prompt_versions, sort_keys=True) for r in records}),
    }


def _sharegpt_rows(
    store: ArtifactStore, prefix: str, kept: list[tuple[GenerationRecord, Item]]
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    rows, stored_uris = [], []
    for record, item in kept:
        relative, uris = [], []
        for k, uri in enumerate(item.images):
            suffix = PurePosixPath(uri).suffix or ".png"
            name = f"images/{item.idx:07d}_{k}{suffix}"
            uris.append(store.put_file(store.local_path(uri), f"{prefix}/{name}").uri)
            relative.append(name)
        turn = assistant_turn(record.reasoning or "", record.final_answer or "")
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user_turn(item.question, len(relative))},
                    {"role": "assistant", "content": turn},
                ],
                "images": relative,
            }
        )
        stored_uris.append(uris)
    return rows, stored_uris


def _parquet_bytes(rows: list[dict[str, Any]], kept: list[tuple[GenerationRecord, Item]]) -> bytes:
    table = pa.table(
        {
            "messages": [row["messages"] for row in rows],
            "images": [row["images"] for row in rows],
            "question": [item.question for _, item in kept],
            "answer": [item.answer for _, item in kept],
            "source_item_id": [str(item.id) for _, item in kept],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _dataset_name(session: Session, job: Job, spec: ColdstartSpec) -> str:
    name = spec.output_name or f"cold-{str(job.id)[:8]}"
    taken = select(Dataset.id).where(Dataset.team_id == job.team_id, Dataset.name == name)
    return name if session.scalar(taken) is None else f"{name}-{str(job.id)[:8]}"


def assemble(session: Session, store: ArtifactStore, job: Job, spec: ColdstartSpec) -> None:
    """Write the exports, register the `cold` dataset and artifacts, finish the job."""
    records = list(
        session.scalars(select(GenerationRecord).where(GenerationRecord.job_id == job.id))
    )
    kept: list[tuple[GenerationRecord, Item]] = list(
        session.execute(
            select(GenerationRecord, Item)
            .join(Item, Item.id == GenerationRecord.item_id)
            .where(GenerationRecord.job_id == job.id, GenerationRecord.status == "kept")
            .order_by(Item.idx)
        ).all()
    )
    report = funnel(records, job.items_total)
    job.counters = report
    if job.parent_id is not None:
        enqueue_after_commit(session, queues.JOB_ADVANCE, [str(job.parent_id)])
    if not kept:
        job.status = "failed"
        job.error = f"no sample passed verification; funnel: {json.dumps(report)}"
        return
    prefix = f"exports/{job.id}"
    name = _dataset_name(session, job, spec)
    rows, image_uris = _sharegpt_rows(store, prefix, kept)
    info = {
        name: {
            "file_name": "cold.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
    if "sharegpt" in spec.export_formats:
        store.put_bytes(
            json.dumps(rows, ensure_ascii=False, indent=1).encode(), f"{prefix}/cold.json"
        )
        store.put_bytes(json.dumps(info, indent=2).encode(), f"{prefix}/dataset_info.json")
    if "parquet" in spec.export_formats:
        store.put_bytes(_parquet_bytes(rows, kept), f"{prefix}/cold.parquet")
    report_obj = store.put_bytes(json.dumps(report, indent=2).encode(), f"{prefix}/funnel.json")
    export_uri = store.uri_for(prefix)
    dataset = Dataset(
        team_id=job.team_id,
        name=name,
        kind="cold",
        format="sharegpt",
        size=len(kept),
        uri=export_uri,
        produced_by_job_id=job.id,
        meta={"source_dataset_id": spec.dataset_id, "file": "cold.json", "funnel": report},
    )
    session.add(dataset)
    session.flush()
    for idx, ((_record, item), uris) in enumerate(zip(kept, image_uris, strict=True)):
        session.add(
            Item(
                dataset_id=dataset.id,
                idx=idx,
                images=uris,
                question=item.question,
                answer=item.answer,
                extra={
                    "assistant": rows[idx]["messages"][1]["content"],
                    "source_item_id": str(item.id),
                },
            )
        )
    _register_artifacts(session, store, job, export_uri, report_obj.uri)
    job.output = {"dataset_id": str(dataset.id), "export_uri": export_uri, "funnel": report}


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
