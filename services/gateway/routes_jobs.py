"""Job routes: create, list, get, cancel, stages, metrics, artifacts."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from services.gateway.deps import SessionDep, TeamDep
from services.gateway.paging import INT32_MAX, NOT_FOUND, Limit, Offset, page_of
from shared import artifacts, jobs
from shared.contracts.api import (
    ArtifactOut,
    ErrorOut,
    JobCreate,
    JobOut,
    MetricOut,
    Page,
    StageOut,
)
from shared.contracts.specs import JobKind
from shared.contracts.status import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


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
    return JobOut.model_validate(job)


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
    return page_of([JobOut.model_validate(r) for r in rows], total, limit, offset)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> JobOut:
    """One job with its progress counters."""
    return JobOut.model_validate(jobs.get_job(session, team=team, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, responses=NOT_FOUND)
def cancel_job(job_id: uuid.UUID, session: SessionDep, team: TeamDep) -> JobOut:
    """Cancel a job and its child jobs; work in flight stops at the next item or step."""
    job = jobs.get_job(session, team=team, job_id=job_id)
    return JobOut.model_validate(jobs.cancel_job(session, job=job))


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
