"""How far a job is and how it ended: the one definition the API, the dashboard and the
consoles show, read from the database (job counters, stage rows, metric rows, eval results,
child jobs), never parsed from a run's text output.

- coldstart: items settled (done + failed) of the job's items;
- sft: the global step of its planned steps (``max_steps``, else the count the trainer
  planned from the epochs, once it has started), with the last loss;
- grpo: the global step across stages of the stages' steps, the running (or last
  started) stage's shape and last reward;
- eval: result rows of the items to evaluate (each dataset's size, cut to ``limit``);
- pipeline: finished children of the planned ones, with the current child's own progress.

A succeeded job shows ``done == total``.  ``progress_of`` reads a page of jobs in a fixed
number of queries, however many jobs the page holds.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from shared.contracts.api import ProgressOut
from shared.contracts.status import JOB_TERMINAL, JobStatus, StageStatus
from shared.db.models import Dataset, EvalResult, Job, Metric, Stage
from shared.pipeline import planned_kinds
from shared.storage import ArtifactStore

TRAINING = ("sft", "grpo")
LAST_VALUES = ("loss", "reward_mean")  # logged at every training step


@dataclass(frozen=True)
class _StageRow:
    status: str
    summary: dict[str, Any]


@dataclass
class _Rows:
    """What a page of jobs needs from the database beyond the job rows, read once."""

    children: dict[uuid.UUID, list[Job]] = field(default_factory=lambda: defaultdict(list))
    stages: dict[uuid.UUID, dict[int, _StageRow]] = field(default_factory=lambda: defaultdict(dict))
    # The newest step of a (job, stage), and the value of each LAST_VALUES metric there.
    steps: dict[tuple[uuid.UUID, int], int] = field(default_factory=dict)
    last: dict[tuple[uuid.UUID, int, str], float] = field(default_factory=dict)
    results: dict[uuid.UUID, int] = field(default_factory=dict)
    sizes: dict[uuid.UUID, int] = field(default_factory=dict)


def planned_steps(config: Mapping[str, Any], summary: Mapping[str, Any]) -> int | None:
    """A training stage's length: its configured steps (``steps``, ``max_steps``), else
    what the trainer planned (its summary's ``steps``); None while not known."""
    steps = config.get("steps") or config.get("max_steps") or summary.get("steps")
    return int(steps) if steps else None


def counted(progress: ProgressOut) -> str:
    """``48/150 steps``, or ``48 steps`` while the total is not known."""
    of = f"/{progress.total}" if progress.total is not None else ""
    return f"{progress.done}{of} {progress.unit}"


def describe(progress: ProgressOut) -> str:
    """``48/150 steps · stage 2/2 · 48×4 · reward 0.42``."""
    parts = [counted(progress), progress.stage, progress.detail]
    return " · ".join(part for part in parts if part)


def _uuids(values: Iterable[object]) -> list[uuid.UUID]:
    """The values that are UUIDs (a spec's dataset references), others left out."""
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return out


def _read_children(session: Session, rows: _Rows, jobs: Sequence[Job]) -> list[Job]:
    parents = [job.id for job in jobs if job.kind == "pipeline"]
    if not parents:
        return []
    query = select(Job).where(Job.parent_id.in_(parents)).order_by(Job.created_at)
    children = list(session.scalars(query))
    for child in children:
        assert child.parent_id is not None  # selected by it
        rows.children[child.parent_id].append(child)
    return children


def _read_training(session: Session, rows: _Rows, ids: list[uuid.UUID]) -> None:
    stages = select(Stage.job_id, Stage.idx, Stage.status, Stage.summary).where(
        Stage.job_id.in_(ids)
    )
    for job_id, idx, status, summary in session.execute(stages):
        rows.stages[job_id][idx] = _StageRow(status, summary or {})
    newest = (
        select(Metric.job_id, Metric.stage_idx, Metric.name, func.max(Metric.step).label("step"))
        .where(Metric.job_id.in_(ids), Metric.name.in_(LAST_VALUES))
        .group_by(Metric.job_id, Metric.stage_idx, Metric.name)
        .subquery()
    )
    values = select(newest, Metric.value).join(
        Metric,
        and_(
            Metric.job_id == newest.c.job_id,
            Metric.stage_idx == newest.c.stage_idx,
            Metric.name == newest.c.name,
            Metric.step == newest.c.step,
        ),
    )
    for job_id, stage_idx, name, step, value in session.execute(values):
        key = (job_id, stage_idx)
        rows.steps[key] = max(rows.steps.get(key, 0), step)
        rows.last[(job_id, stage_idx, name)] = value


def _read_evals(session: Session, rows: _Rows, evals: list[Job]) -> None:
    counts = (
        select(EvalResult.job_id, func.count())
        .where(EvalResult.job_id.in_([job.id for job in evals]))
        .group_by(EvalResult.job_id)
    )
    rows.results = dict(session.execute(counts).all())
    ids = _uuids({i for job in evals for i in job.spec.get("dataset_ids", [])})
    sizes = select(Dataset.id, Dataset.size).where(Dataset.id.in_(ids))
    rows.sizes = dict(session.execute(sizes).all())


def _read(session: Session, jobs: Sequence[Job]) -> _Rows:
    """At most five queries, whatever the number of jobs."""
    rows = _Rows()
    every = [*jobs, *_read_children(session, rows, jobs)]
    training = [job.id for job in every if job.kind in TRAINING]
    if training:
        _read_training(session, rows, training)
    evals = [job for job in every if job.kind == "eval"]
    if evals:
        _read_evals(session, rows, evals)
    return rows


def _coldstart(job: Job, rows: _Rows) -> ProgressOut:
    detail = f"{job.items_failed} failed" if job.items_failed else ""
    settled = job.items_done + job.items_failed
    return ProgressOut(done=settled, total=job.items_total or None, unit="items", detail=detail)


def _sft(job: Job, rows: _Rows) -> ProgressOut:
    stage = rows.stages[job.id].get(0)
    total = planned_steps(job.spec, stage.summary if stage else {})
    loss = rows.last.get((job.id, 0, "loss"))
    detail = "" if loss is None else f"loss {loss:.3g}"
    step = rows.steps.get((job.id, 0), 0)
    return ProgressOut(done=step, total=total, unit="steps", detail=detail)


def _grpo(job: Job, rows: _Rows) -> ProgressOut:
    specs: list[dict[str, Any]] = job.spec.get("stages", [])
    stages = rows.stages[job.id]
    done = 0
    for idx, spec in enumerate(specs):
        stage = stages.get(idx)
        if stage is None or stage.status == StageStatus.PENDING:
            continue
        finished = stage.status == StageStatus.SUCCEEDED
        done += int(spec["steps"]) if finished else rows.steps.get((job.id, idx), 0)
    started = sorted(i for i, s in stages.items() if s.status != StageStatus.PENDING)
    running = [i for i in started if stages[i].status == StageStatus.RUNNING]
    current = (running or started or [0])[-1]
    label, detail = None, ""
    if current < len(specs):
        shape = specs[current]
        label = (
            f"stage {current + 1}/{len(specs)} · "
            f"{shape.get('max_completion_tokens')}×{shape.get('group_size')}"
        )
    reward = rows.last.get((job.id, current, "reward_mean"))
    if reward is not None:
        detail = f"reward {reward:.3g}"
    total = sum(int(spec["steps"]) for spec in specs) or None
    return ProgressOut(done=done, total=total, unit="steps", stage=label, detail=detail)


def _eval(job: Job, rows: _Rows) -> ProgressOut:
    limit = job.spec.get("limit")
    sizes = [rows.sizes.get(i, 0) for i in _uuids(job.spec.get("dataset_ids", []))]
    total = sum(min(n, limit) if limit else n for n in sizes)
    return ProgressOut(done=rows.results.get(job.id, 0), total=total or None, unit="items")


def _pipeline(job: Job, rows: _Rows) -> ProgressOut:
    planned = planned_kinds(job.spec.get("eval_dataset_ids", []))
    by_kind = {child.kind: child for child in rows.children[job.id]}
    finished = [k for k in planned if k in by_kind and by_kind[k].status == JobStatus.SUCCEEDED]
    current = next((k for k in planned if k not in finished), planned[-1])
    child = by_kind.get(current)
    detail = describe(_of(child, rows)) if child is not None else ""
    label = f"step {planned.index(current) + 1}/{len(planned)} · {current}"
    return ProgressOut(
        done=len(finished), total=len(planned), unit="jobs", stage=label, detail=detail
    )


KINDS = {
    "coldstart": _coldstart,
    "sft": _sft,
    "grpo": _grpo,
    "eval": _eval,
    "pipeline": _pipeline,
}


def _of(job: Job, rows: _Rows) -> ProgressOut:
    progress = KINDS[job.kind](job, rows)
    if job.status != JobStatus.SUCCEEDED:
        return progress
    total = progress.done if progress.total is None else progress.total
    return progress.model_copy(update={"done": total, "total": total})


def progress_of(session: Session, jobs: Sequence[Job]) -> dict[uuid.UUID, ProgressOut]:
    """Where each of ``jobs`` is, by job ID, read in a fixed number of queries."""
    rows = _read(session, jobs)
    return {job.id: _of(job, rows) for job in jobs}


def job_progress(session: Session, job: Job) -> ProgressOut:
    """Where ``job`` is now."""
    return progress_of(session, [job])[job.id]


def children(session: Session, job: Job) -> list[Job]:
    """A pipeline's child jobs, in the order they were started."""
    query = select(Job).where(Job.parent_id == job.id).order_by(Job.created_at)
    return list(session.scalars(query))


def figures(session: Session, job: Job) -> str:
    """What a finished job came to, in a few words (its failure, if it failed)."""
    if job.status not in JOB_TERMINAL:
        return f"left {job.status}"
    if job.status != JobStatus.SUCCEEDED:
        return f"{job.status}: {job.error or 'no error recorded'}"
    output = job.output
    if job.kind == "sft":
        rows = _read(session, [job])
        loss = rows.last.get((job.id, 0, "loss"), float("nan"))
        return f"{rows.steps.get((job.id, 0), 0)} steps, final loss {loss:.3g}"
    if job.kind == "grpo":
        stages = list(session.scalars(select(Stage).where(Stage.job_id == job.id)))
        last = max(stages, key=lambda stage: stage.idx).summary if stages else {}
        steps = sum(int(s.get("steps", 0)) for s in job.spec.get("stages", []))
        return (
            f"{len(stages)} stages, {steps} steps, reward {last.get('reward_mean', 0.0):.3f}, "
            f"accuracy {last.get('accuracy', 0.0):.3f}"
        )
    if job.kind == "eval":
        return "; ".join(
            f"{name}: accuracy {row['accuracy']:.3f} on {row['n']} items"
            for name, row in output.get("accuracy", {}).items()
        )
    if job.kind == "coldstart":
        funnel = output.get("funnel", {})
        return f"{funnel.get('items_in', job.items_total)} items in, {funnel.get('kept', 0)} kept"
    if job.kind == "pipeline":
        return f"{len(children(session, job))} jobs"
    return f"{job.items_done}/{job.items_total} items"


def run_log(store: ArtifactStore, job: Job) -> Path | None:
    """The newest attempt log of a training job's run, if it wrote one."""
    folder = store.local_path(store.uri_for(f"runs/{job.id}/logs"))
    logs = sorted(folder.glob("attempt-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    return logs[-1] if logs else None
