"""An eval job stores its results a chunk at a time: its progress moves while it runs,
and a run that dies part-way is relaunched to evaluate only what it had not stored,
ending with the results of an uninterrupted run — none doubled.

The real tiny student generates through the transformers engine; a wrapper around that
engine only watches what is stored when each chunk is asked for, and kills one run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from entrypoints.bootstrap import Embedded
from services.trainer.eval_job import evaluate_datasets
from services.trainer.evaluation import eval_engine_spec
from services.trainer.tracking import Tracker
from shared.contracts.specs import EvalSpec
from shared.db.models import EvalResult, Job
from shared.engines import Engine, GenerationRequest, GenerationResult, make_engine
from tests.helpers import discard_messages

pytestmark = pytest.mark.integration


class RunDied(RuntimeError):
    """The run's process is gone."""


class Watched:
    """The real engine; each call notes its size and how many results were stored then."""

    def __init__(self, inner: Engine, platform: Embedded, job_id: uuid.UUID, die_at: int = 0):
        self.inner, self.platform, self.job_id, self.die_at = inner, platform, job_id, die_at
        self.name, self.model_id = inner.name, inner.model_id
        self.calls: list[tuple[int, int]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append((len(requests), _stored(self.platform, self.job_id)))
        if len(self.calls) == self.die_at:
            raise RunDied("killed while generating")
        return self.inner.generate(requests)

    def close(self) -> None:
        """The shared engine is closed by the fixture."""


@pytest.fixture
def spec(toy: dict[str, Any]) -> EvalSpec:
    return EvalSpec(
        model=str(toy["student"]),
        dataset_ids=[toy["rl"]],
        limit=8,
        write_every=3,
        max_tries=1,
        max_new_tokens=8,
    )


@pytest.fixture
def engine(spec: EvalSpec) -> Iterator[Engine]:
    built = make_engine(eval_engine_spec(Path(spec.model), spec))
    yield built
    built.close()


def _tracker(platform: Embedded, spec: EvalSpec, workdir: Path) -> Tracker:
    job_id = platform.submit(spec)
    discard_messages(platform)  # the job is run here, by hand
    with platform.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        team_id = job.team_id
    return Tracker(platform.db, platform.store, job_id, team_id, workdir)


def _stored(platform: Embedded, job_id: uuid.UUID) -> int:
    with platform.db.session() as session:
        query = select(func.count()).where(EvalResult.job_id == job_id)
        return session.scalar(query) or 0


def _results(platform: Embedded, job_id: uuid.UUID) -> dict[str, tuple[str, bool | None, int]]:
    with platform.db.session() as session:
        rows = session.scalars(select(EvalResult).where(EvalResult.job_id == job_id)).all()
    by_item = {str(r.item_id): (r.completion, r.correct, r.tries) for r in rows}
    assert len(by_item) == len(rows), "an item stored twice"
    return by_item


def test_results_are_stored_chunk_by_chunk(
    platform: Embedded, spec: EvalSpec, engine: Engine, tmp_path: Path
) -> None:
    tracker = _tracker(platform, spec, tmp_path)
    watched = Watched(engine, platform, tracker.job_id)
    table = evaluate_datasets(tracker, spec, watched)

    # 8 rows in chunks of 3: each chunk is asked for once the one before it is stored.
    assert watched.calls == [(3, 0), (3, 3), (2, 6)]
    assert _stored(platform, tracker.job_id) == 8
    (row,) = table.values()
    assert row["n"] == 8


def test_a_relaunched_run_evaluates_only_what_was_not_stored(
    platform: Embedded, spec: EvalSpec, engine: Engine, tmp_path: Path
) -> None:
    whole = _tracker(platform, spec, tmp_path / "whole")
    expected = evaluate_datasets(whole, spec, Watched(engine, platform, whole.job_id))

    tracker = _tracker(platform, spec, tmp_path / "broken")
    dying = Watched(engine, platform, tracker.job_id, die_at=3)
    with pytest.raises(RunDied):
        evaluate_datasets(tracker, spec, dying)
    assert _stored(platform, tracker.job_id) == 6  # two chunks stored before it died

    again = Watched(engine, platform, tracker.job_id)
    table = evaluate_datasets(tracker, spec, again)
    assert again.calls == [(2, 6)]  # the last chunk only
    assert table == expected
    assert _results(platform, tracker.job_id) == _results(platform, whole.job_id)
