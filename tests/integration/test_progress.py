"""How far a job is (``shared.progress``), on the real PostgreSQL: each kind mid-run and
finished, read from rows written the way workers and runs write them; and a page of jobs
from the API costs the same few queries however many jobs it holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import teams
from shared.contracts.api import ProgressOut
from shared.contracts.status import JobStatus, StageStatus
from shared.db.models import Dataset, EvalResult, Item, Job, Metric, Stage, Team
from shared.db.session import Database
from shared.progress import describe, job_progress, progress_of

pytestmark = pytest.mark.integration
GRPO_STAGES = [
    {"max_completion_tokens": 16, "group_size": 4, "steps": 4},
    {"max_completion_tokens": 32, "group_size": 2, "steps": 6},
]


@pytest.fixture
def db(pg_module: str) -> Iterator[Database]:
    database = Database(pg_module)
    yield database
    database.dispose()


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    with db.session() as session:
        yield session


@pytest.fixture
def team(session: Session) -> Team:
    return teams.create_team(session, name=f"team-{uuid.uuid4().hex[:8]}")


def _job(session: Session, team: Team, kind: str, spec: dict[str, Any], **values: Any) -> Job:
    job = Job(team_id=team.id, kind=kind, spec={"kind": kind, **spec}, **values)
    session.add(job)
    session.flush()
    return job


def _stage(session: Session, job: Job, idx: int, status: StageStatus, **values: Any) -> None:
    session.add(Stage(job_id=job.id, idx=idx, name=f"stage-{idx}", status=status, **values))


def _metrics(session: Session, job: Job, stage: int, steps: range, **series: float) -> None:
    """One row per name and step, as a run logs them; each value grows with the step."""
    session.add_all(
        Metric(job_id=job.id, stage_idx=stage, step=step, name=name, value=base * step)
        for step in steps
        for name, base in series.items()
    )
    session.flush()


def _dataset(session: Session, team: Team, size: int) -> Dataset:
    dataset = Dataset(team_id=team.id, name=f"d{size}", kind="eval", format="jsonl", size=size)
    session.add(dataset)
    session.flush()
    session.add_all(
        Item(dataset_id=dataset.id, idx=i, question=f"q{i}", answer=str(i)) for i in range(size)
    )
    session.flush()
    return dataset


def _grpo(session: Session, team: Team, **values: Any) -> Job:
    return _job(session, team, "grpo", {"stages": GRPO_STAGES}, **values)


def _grpo_in_stage_two(session: Session, team: Team) -> Job:
    """Stage 1 done (its 4 steps logged), stage 2 at its third step."""
    job = _grpo(session, team, status=JobStatus.RUNNING)
    _stage(session, job, 0, StageStatus.SUCCEEDED)
    _stage(session, job, 1, StageStatus.RUNNING)
    _metrics(session, job, 0, range(1, 5), loss=0.1, reward_mean=0.1)
    _metrics(session, job, 1, range(1, 4), loss=0.2, reward_mean=0.25)
    return job


def test_coldstart_counts_settled_items_and_says_how_many_failed(
    session: Session, team: Team
) -> None:
    running = _job(session, team, "coldstart", {}, items_total=10, items_done=4, items_failed=2)
    clean = _job(session, team, "coldstart", {}, items_total=10, items_done=3)
    waiting = _job(session, team, "coldstart", {})
    shown = progress_of(session, [running, clean, waiting])
    assert shown[running.id] == ProgressOut(done=6, total=10, unit="items", detail="2 failed")
    assert shown[clean.id] == ProgressOut(done=3, total=10, unit="items")
    assert shown[waiting.id] == ProgressOut(done=0, total=None, unit="items")


def test_sft_counts_steps_of_max_steps_or_of_what_the_trainer_planned(
    session: Session, team: Team
) -> None:
    capped = _job(session, team, "sft", {"max_steps": 6}, status=JobStatus.RUNNING)
    _stage(session, capped, 0, StageStatus.RUNNING)
    _metrics(session, capped, 0, range(1, 4), loss=0.5, grad_norm=7.0)
    by_epochs = _job(session, team, "sft", {"max_steps": None}, status=JobStatus.RUNNING)
    _stage(session, by_epochs, 0, StageStatus.RUNNING, summary={"steps": 9})
    _metrics(session, by_epochs, 0, range(1, 3), loss=0.25)
    unplanned = _job(session, team, "sft", {"max_steps": None})
    shown = progress_of(session, [capped, by_epochs, unplanned])
    assert shown[capped.id] == ProgressOut(done=3, total=6, unit="steps", detail="loss 1.5")
    assert shown[by_epochs.id] == ProgressOut(done=2, total=9, unit="steps", detail="loss 0.5")
    assert shown[unplanned.id] == ProgressOut(done=0, total=None, unit="steps")


def test_grpo_counts_global_steps_across_stages_and_names_the_running_stage(
    session: Session, team: Team
) -> None:
    running = _grpo_in_stage_two(session, team)
    waiting = _grpo(session, team)
    shown = progress_of(session, [running, waiting])
    total = sum(int(stage["steps"]) for stage in GRPO_STAGES)
    assert shown[running.id] == ProgressOut(
        done=4 + 3, total=total, unit="steps", stage="stage 2/2 · 32×2", detail="reward 0.75"
    )
    assert shown[waiting.id] == ProgressOut(
        done=0, total=total, unit="steps", stage="stage 1/2 · 16×4"
    )


def test_a_cancelled_grpo_shows_the_stage_it_stopped_in(session: Session, team: Team) -> None:
    job = _grpo(session, team, status=JobStatus.CANCELLED)
    _stage(session, job, 0, StageStatus.CANCELLED)
    _stage(session, job, 1, StageStatus.PENDING)
    _metrics(session, job, 0, range(1, 3), loss=0.1, reward_mean=0.5)
    progress = job_progress(session, job)
    assert (progress.done, progress.stage, progress.detail) == (2, "stage 1/2 · 16×4", "reward 1")


def test_eval_counts_result_rows_of_the_items_to_evaluate(session: Session, team: Team) -> None:
    small, large = _dataset(session, team, 5), _dataset(session, team, 8)
    ids = [str(small.id), str(large.id)]
    limited = _job(session, team, "eval", {"dataset_ids": ids, "limit": 6})
    whole = _job(session, team, "eval", {"dataset_ids": ids, "limit": None})
    items = session.scalars(select(Item).where(Item.dataset_id == small.id).order_by(Item.idx))
    session.add_all(
        EvalResult(job_id=limited.id, dataset_id=small.id, item_id=item.id)
        for item in list(items)[:3]
    )
    session.flush()
    shown = progress_of(session, [limited, whole])
    assert shown[limited.id] == ProgressOut(done=3, total=5 + 6, unit="items")
    assert shown[whole.id] == ProgressOut(done=0, total=5 + 8, unit="items")


def test_a_pipeline_counts_finished_children_and_shows_the_current_ones_progress(
    session: Session, team: Team
) -> None:
    pipeline = _job(
        session, team, "pipeline", {"eval_dataset_ids": ["x"]}, status=JobStatus.RUNNING
    )
    _job(session, team, "coldstart", {}, parent_id=pipeline.id, status=JobStatus.SUCCEEDED)
    _job(session, team, "sft", {"max_steps": 3}, parent_id=pipeline.id, status="succeeded")
    grpo = _grpo_in_stage_two(session, team)
    grpo.parent_id = pipeline.id
    without_eval = _job(session, team, "pipeline", {"eval_dataset_ids": []})
    session.flush()
    shown = progress_of(session, [pipeline, without_eval])
    assert shown[pipeline.id] == ProgressOut(
        done=2,
        total=4,
        unit="jobs",
        stage="step 3/4 · grpo",
        detail=describe(job_progress(session, grpo)),
    )
    assert "7/10 steps · stage 2/2 · 32×2" in shown[pipeline.id].detail
    assert shown[without_eval.id] == ProgressOut(
        done=0, total=3, unit="jobs", stage="step 1/3 · coldstart"
    )


def test_a_succeeded_job_of_any_kind_is_done(session: Session, team: Team) -> None:
    done = JobStatus.SUCCEEDED
    dataset = _dataset(session, team, 4)
    jobs = [
        _job(session, team, "coldstart", {}, items_total=5, items_done=4, status=done),
        _job(session, team, "sft", {"max_steps": None}, status=done),
        _grpo(session, team, status=done),
        _job(session, team, "eval", {"dataset_ids": [str(dataset.id)]}, status=done),
        _job(session, team, "pipeline", {}, status=done),
    ]
    _metrics(session, jobs[1], 0, range(1, 8), loss=0.1)
    shown = progress_of(session, jobs)
    assert [(p.done, p.total) for p in shown.values()] == [(5, 5), (7, 7), (10, 10), (4, 4), (3, 3)]


@contextmanager
def counted_queries(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` inside the block."""
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _mixed_jobs(session: Session, team: Team, n: int) -> None:
    """``n`` top-level jobs of every kind, mid-run, pipelines with children."""
    dataset = _dataset(session, team, 3)
    for i in range(n):
        kind = ("coldstart", "sft", "grpo", "eval", "pipeline")[i % 5]
        if kind == "grpo":
            _grpo_in_stage_two(session, team)
        elif kind == "eval":
            _job(session, team, "eval", {"dataset_ids": [str(dataset.id)]})
        elif kind == "pipeline":
            parent = _job(session, team, "pipeline", {}, status=JobStatus.RUNNING)
            _job(session, team, "coldstart", {}, parent_id=parent.id, status="succeeded")
            sft = _job(session, team, "sft", {"max_steps": 4}, parent_id=parent.id)
            _metrics(session, sft, 0, range(1, 3), loss=0.3)
        else:
            job = _job(session, team, kind, {"max_steps": 5}, items_total=3, items_done=1)
            _metrics(session, job, 0, range(1, 3), loss=0.3)


def test_a_page_of_jobs_costs_the_same_queries_whatever_its_size(
    pg_module: str, redis_url: str, tmp_path: Path
) -> None:
    settings = GatewaySettings(
        database_url=pg_module, redis_url=redis_url, artifact_uri=tmp_path.as_uri()
    )
    app = create_app(settings)
    db: Database = app.state.context.db
    with db.session() as session:
        team = teams.create_team(session, name=f"page-{uuid.uuid4().hex[:8]}")
        key = teams.create_key(session, team=team).secret
        _mixed_jobs(session, team, 20)
    headers = {"Authorization": f"Bearer {key}"}
    costs, pages = {}, {}
    with TestClient(app) as client:
        for size in (1, 5, 20):
            client.get("/v1/jobs", headers=headers, params={"limit": size})  # warm the pool
            with counted_queries(db.engine) as statements:
                answer = client.get("/v1/jobs", headers=headers, params={"limit": size})
            assert answer.status_code == 200, answer.text
            costs[size], pages[size] = len(statements), answer.json()["items"]
    assert len(pages[20]) == 20
    assert {job["kind"] for job in pages[20]} == {"coldstart", "sft", "grpo", "eval", "pipeline"}
    assert costs[20] == costs[5], costs  # each kind's rows are read once for the whole page
    with db.session() as session:
        by_id = {job.id: job for job in session.scalars(select(Job).where(Job.team_id == team.id))}
        page = [by_id[uuid.UUID(job["id"])] for job in pages[20]]
        with counted_queries(db.engine) as statements:
            expected = progress_of(session, page)
    assert len(statements) <= 5, statements
    assert [ProgressOut.model_validate(j["progress"]) for j in pages[20]] == list(expected.values())
    db.dispose()
