"""The pipeline job: coldstart → sft → grpo → eval as child jobs, each fed by the last.

``advance`` is called whenever a child finishes (and once at the start).  It looks at
the children in order, starts the next one with its predecessor's output, or settles the
pipeline: failed or cancelled when a child was, succeeded when the last one was.
Calling it twice does no harm: the parent row is locked while it decides.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import events, jobs
from shared.contracts.specs import (
    ColdstartSpec,
    EvalSpec,
    GrpoSpec,
    JobSpec,
    PipelineSpec,
    SftSpec,
    parse_spec,
)
from shared.contracts.status import JOB_ACTIVE, JOB_TERMINAL, JobStatus
from shared.db.models import Job, Team, utcnow
from shared.errors import TeamNotFound, WrongJobKind
from shared.events import EventType

ORDER = ("coldstart", "sft", "grpo", "eval")


def planned_kinds(eval_dataset_ids: Sequence[object]) -> list[str]:
    """The children a pipeline runs, in order: eval only when it names eval datasets."""
    return [kind for kind in ORDER if kind != "eval" or eval_dataset_ids]


def child_spec(kind: str, spec: PipelineSpec, done: dict[str, Job]) -> JobSpec:
    """The spec of the next child, its inputs taken from the children before it."""
    if kind == "coldstart":
        return ColdstartSpec(dataset_id=spec.source_dataset_id, **spec.coldstart.model_dump())
    if kind == "sft":
        cold = done["coldstart"].output["dataset_id"]
        return SftSpec(model=spec.base_model, dataset_id=cold, **spec.sft.model_dump())
    if kind == "grpo":
        return GrpoSpec(
            model=done["sft"].output["checkpoint_uri"],
            dataset_id=spec.rl_dataset_id or spec.source_dataset_id,
            **spec.grpo.model_dump(),
        )
    return EvalSpec(
        model=done["grpo"].output["checkpoint_uri"],
        dataset_ids=spec.eval_dataset_ids,
        **spec.eval.model_dump(),
    )


def _settle(
    session: Session, parent: Job, status: JobStatus, error: str | None, output: dict[str, Any]
) -> None:
    parent.status, parent.error, parent.finished_at = status, error, utcnow()
    parent.output = {**parent.output, **output}
    events.record_outcome(session, parent)


def advance(session: Session, parent_id: uuid.UUID | str) -> None:
    """Start the next child, or settle the pipeline from its children's outcomes."""
    # FOR NO KEY UPDATE: events of the job inserted meanwhile (their foreign key check
    # takes a key-share lock on this row) are not blocked by it.
    parent = session.get(Job, uuid.UUID(str(parent_id)), with_for_update={"key_share": True})
    if parent is None or parent.status in JOB_TERMINAL:
        return
    spec = parse_spec(parent.spec)
    if not isinstance(spec, PipelineSpec):
        raise WrongJobKind(parent.id, expected="pipeline", actual=parent.kind)
    children = {c.kind: c for c in session.scalars(select(Job).where(Job.parent_id == parent.id))}
    if parent.status == JobStatus.QUEUED:
        parent.status, parent.started_at = JobStatus.RUNNING, utcnow()
        events.record(session, parent.id, EventType.STARTED, "Pipeline started")
    steps = planned_kinds(spec.eval_dataset_ids)
    done: dict[str, Job] = {}
    for kind in steps:
        child = children.get(kind)
        if child is None:
            team = session.get(Team, parent.team_id)
            if team is None:
                raise TeamNotFound(parent.team_id)
            new = jobs.create_job(
                session,
                team=team,
                spec=child_spec(kind, spec, done),
                name=f"{parent.name}/{kind}",
                parent=parent,
            )
            parent.output = {**parent.output, f"{kind}_job_id": str(new.id)}
            message = f"Created the {kind} step as job {str(new.id)[:8]}"
            events.record(
                session,
                parent.id,
                EventType.CHILD_CREATED,
                message,
                child_id=str(new.id),
                kind=kind,
            )
            return
        if child.status in JOB_ACTIVE:
            return
        if child.status != JobStatus.SUCCEEDED:
            status = (
                JobStatus.CANCELLED if child.status == JobStatus.CANCELLED else JobStatus.FAILED
            )
            error = f"{kind} step {child.status}: {child.error or ''}".strip()
            _settle(session, parent, status, error, {})
            return
        done[kind] = child
    final = done[steps[-1]].output
    _settle(
        session,
        parent,
        JobStatus.SUCCEEDED,
        None,
        {"final": final, "checkpoint_uri": done["grpo"].output.get("checkpoint_uri")},
    )
