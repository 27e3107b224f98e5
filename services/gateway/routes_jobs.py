"""Job routes: create, list, get, cancel, stages, metrics, artifacts, and what a job
did: its events, the completions GRPO kept, coldstart records and funnel, eval results."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy.orm import Session

from services.gateway.deps import SessionDep, TeamDep
from services.gateway.paging import INT32_MAX, NOT_FOUND, Limit, Offset, page_of
from services.gateway.routes_items import image_urls
from shared import artifacts, coldstart, events, jobs, progress
from shared.contracts.api import (
    ArtifactOut,
    ErrorOut,
    EvalResultOut,
    EventOut,
    FunnelOut,
    JobCreate,
    JobOut,
    MetricOut,
    Page,
    RecordOut,
    SampleOut,
    StageOut,
)
from shared.contracts.specs import JobKind
from shared.contracts.status import JobStatus, RecordStatus
from shared.db.models import Base, Item, Job, RolloutSample

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _jobs_out(session: Session, rows: list[Job]) -> list[JobOut]:
    """Jobs as the API shows them, with their progress (read for all of them at once)."""
    shown = progress.progress_of(session, rows)
    return [JobOut.model_validate({**_columns(r), "progress": shown[r.id]}) for r in rows]


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="A key of the client's choosing: a retry with it returns the same job.",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "A retry: the job this key created before."},
        409: {"model": ErrorOut, "description": "The key was used for a different spec."},
    },
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    team: TeamDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Submit a job; its spec is validated and stored with its work (sent to the queues
    when the broker takes it: a job is durable once this answers)."""
    job, created = jobs.submit_job(
        session, team=team, spec=body.spec, name=body.name, idempotency_key=idempotency_key
    )
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return _jobs_out(session, [job])[0]


@router.get("", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 50,
    offset: Offset = 0,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    parent_id: uuid.UUID | None = None,
) -> Page[JobOut]:
    """The team's jobs, newest first, filtered by status, kind or parent."""
    filters = jobs.JobFilter(status=status, kind=kind, parent_id=parent_id)
    rows, total = jobs.list_jobs(session, team=team, filters=filters, limit=limit, offset=offset)
    return page_of(_jobs_out(session, rows), total, limit, offset)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> JobOut:
    """One job with its progress counters."""
    return _jobs_out(session, [jobs.get_job(session, team=team, job_id=job_id)])[0]


@router.post("/{job_id}/cancel", response_model=JobOut, responses=NOT_FOUND)
def cancel_job(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> JobOut:
    """Cancel a job and its child jobs; work in flight stops at the next item or step."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    return _jobs_out(session, [jobs.cancel_job(session, job=job)])[0]


@router.get("/{job_id}/stages", response_model=list[StageOut], responses=NOT_FOUND)
def list_stages(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> list[StageOut]:
    """A training job's stages (the PTST stage state), in order."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    return [StageOut.model_validate(r) for r in jobs.list_stages(session, job=job)]


@router.get("/{job_id}/metrics", response_model=list[MetricOut], responses=NOT_FOUND)
def list_metrics(
    job_id: uuid.UUID,
    session: SessionDep,
    team: TeamDep,
    name: Annotated[list[str] | None, Query()] = None,
    stage: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    after_step: Annotated[int | None, Query(ge=-1, le=INT32_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> list[MetricOut]:
    """A job's metric series, by stage and step; filter by name, stage, step."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    filters = jobs.MetricFilter(names=name, stage=stage, after_step=after_step, limit=limit)
    return [
        MetricOut.model_validate(r) for r in jobs.list_metrics(session, job=job, filters=filters)
    ]


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut], responses=NOT_FOUND)
def list_artifacts(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> list[ArtifactOut]:
    """What a job stored: checkpoints, exports, reports."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    return [ArtifactOut.model_validate(r) for r in artifacts.list_artifacts(session, job=job)]


Cursor = Annotated[int, Query(ge=0, le=2**63 - 1, description="Only events after this ID.")]
Level = Literal["info", "warning", "error"]
# A read that only jobs of some kinds answer: others get a 409 that names the kind.
WRONG_KIND: dict[int | str, dict[str, object]] = {
    **NOT_FOUND,
    409: {"model": ErrorOut, "description": "The job is of a kind that does not have these"},
}


@router.get("/{job_id}/events", response_model=Page[EventOut], responses=NOT_FOUND)
def list_events(
    job_id: uuid.UUID,
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 100,
    offset: Offset = 0,
    after: Cursor | None = None,
    types: Annotated[list[events.EventType] | None, Query(alias="type")] = None,
    level: Level | None = None,
) -> Page[EventOut]:
    """What happened to a job, oldest first; poll with ``after`` = the last ID seen."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    filters = events.EventFilter(after=after, types=[str(t) for t in types or []], level=level)
    rows, total = events.list_events(session, job=job, filters=filters, limit=limit, offset=offset)
    return page_of([EventOut.model_validate(r) for r in rows], total, limit, offset)


def _sample_out(sample: RolloutSample) -> SampleOut:
    images = image_urls(sample.item_id, len(sample.images))
    return SampleOut.model_validate({**_columns(sample), "images": images})


def _columns(row: Base) -> dict[str, object]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


@router.get("/{job_id}/samples", response_model=Page[SampleOut], responses=WRONG_KIND)
def list_samples(
    job_id: uuid.UUID,
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 50,
    offset: Offset = 0,
    stage: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    step: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
) -> Page[SampleOut]:
    """Completions a GRPO job kept (a few per step), with their rewards and verdicts."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    jobs.require_kind(job, "grpo", what="rollout samples")
    filters = jobs.SampleFilter(stage=stage, step=step)
    rows, total = jobs.list_samples(session, job=job, filters=filters, limit=limit, offset=offset)
    return page_of([_sample_out(r) for r in rows], total, limit, offset)


def _with_item(row: Base, item: Item) -> dict[str, object]:
    """A per-item row's columns with its item's question, gold answer and image URLs."""
    images = image_urls(item.id, len(item.images))
    fields = {"idx": item.idx, "question": item.question, "answer": item.answer}
    return {**_columns(row), **fields, "images": images}


@router.get("/{job_id}/records", response_model=Page[RecordOut], responses=WRONG_KIND)
def list_records(
    job_id: uuid.UUID,
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 50,
    offset: Offset = 0,
    status: RecordStatus | None = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[RecordOut]:
    """A coldstart job's items with every step's output, in dataset order."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    jobs.require_kind(job, "coldstart", what="generation records")
    filters = coldstart.RecordFilter(status=status, reason=reason)
    rows, total = coldstart.list_records(
        session, job=job, filters=filters, limit=limit, offset=offset
    )
    return page_of(
        [RecordOut.model_validate(_with_item(r, i)) for r, i in rows], total, limit, offset
    )


@router.get("/{job_id}/funnel", response_model=FunnelOut, responses=WRONG_KIND)
def get_funnel(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> FunnelOut:
    """A coldstart job's funnel as it stands, while it runs and after."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    jobs.require_kind(job, "coldstart", what="funnels")
    return coldstart.live_funnel(session, job)


@router.get("/{job_id}/results", response_model=Page[EvalResultOut], responses=WRONG_KIND)
def list_results(
    job_id: uuid.UUID,
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 50,
    offset: Offset = 0,
    dataset_id: uuid.UUID | None = None,
    correct: bool | None = None,
) -> Page[EvalResultOut]:
    """An eval job's per-item outcomes: completion, extracted answer, verdict."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    jobs.require_kind(job, "eval", what="eval results")
    filters = jobs.ResultFilter(dataset_id=dataset_id, correct=correct)
    rows, total = jobs.list_results(session, job=job, filters=filters, limit=limit, offset=offset)
    return page_of(
        [EvalResultOut.model_validate(_with_item(r, i)) for r, i in rows], total, limit, offset
    )
