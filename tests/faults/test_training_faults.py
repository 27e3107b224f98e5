"""A training run through a database cut and a broker restart: it waits the outage out
and goes on — no relaunch, no finished stage redone, every step recorded once.

The run is a real process (the local launcher) reaching PostgreSQL through a TCP proxy
the test cuts, and a Redis of its own that the test kills and restarts empty; the
watcher keeps watching meanwhile and must not take the paused run for a lost one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from entrypoints.bootstrap import embedded
from services.trainer import watcher
from services.trainer.launcher import LocalLauncher
from services.trainer.settings import TrainerSettings
from shared.db.models import Job, Metric, Run, Stage
from shared.settings import BaseVR1Settings
from tests.faults.infra import CuttableProxy, RedisServer
from tests.helpers import discard_messages, training_toy, two_stage_grpo_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 6


def test_a_run_waits_out_a_database_cut_and_a_broker_restart(
    pg_migrated: str, tmp_path: Path
) -> None:
    proxy = CuttableProxy(("127.0.0.1", 5432)).start()
    redis = RedisServer(tmp_path / "redis").start()
    platform = embedded(
        BaseVR1Settings(
            home=tmp_path / "home",
            database_url=pg_migrated,
            artifact_uri=(tmp_path / "artifacts").as_uri(),
        )
    )
    toy = training_toy(platform, tmp_path)
    settings = TrainerSettings(
        home=platform.settings.home,
        database_url=proxy.url_for(pg_migrated),
        artifact_uri=platform.settings.resolved_artifact_uri,
        redis_url=redis.url,
        checkpoint_every=2,
        heartbeat_interval_s=1.0,
        stale_after_s=45.0,
        torch_threads=1,
    )
    spec = two_stage_grpo_spec(toy, str(toy["student"]), steps=STEPS)
    job_id = platform.submit(spec)
    discard_messages(platform)
    launcher = LocalLauncher()
    handle = watcher.launch(platform.db, launcher, settings, str(job_id))
    assert handle is not None

    def stages() -> list[Stage]:
        with platform.db.session() as session:
            return list(session.scalars(select(Stage).where(Stage.job_id == job_id)))

    def losses(stage: int) -> list[int]:
        with platform.db.session() as session:
            query = select(Metric.step).where(
                Metric.job_id == job_id, Metric.stage_idx == stage, Metric.name == "loss"
            )
            return sorted(session.scalars(query))

    def status() -> str:
        with platform.db.session() as session:
            return str(session.scalar(select(Job.status).where(Job.id == job_id)))

    try:
        deadline = time.monotonic() + 600
        while not losses(1):
            assert launcher.status(handle).phase == "running", "the run ended early"
            assert time.monotonic() < deadline, "stage 2 never started"
            time.sleep(0.5)
        first_before = next(s for s in stages() if s.idx == 0)
        steps_before = len(losses(1))

        proxy.cut()
        redis.kill()
        time.sleep(15)
        redis.start()
        proxy.restore()
        restored = time.monotonic()

        watched: list[Any] = []
        while status() in ("queued", "running"):
            watched += watcher.watch_once(platform.db, launcher, settings)
            assert time.monotonic() - restored < 600, "the run did not finish"
            time.sleep(1)
        finished_after = time.monotonic() - restored
    finally:
        launcher.stop(handle)
        redis.kill()
        proxy.close()

    assert watched == []  # the paused run was never taken for a lost one
    with platform.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == "succeeded", job.error
        runs = session.scalar(select(func.count()).where(Run.job_id == job_id))
    assert runs == 1
    first, second = sorted(stages(), key=lambda s: s.idx)
    assert (first.finished_at, first.checkpoint_uri) == (
        first_before.finished_at,
        first_before.checkpoint_uri,
    )
    assert losses(0) == list(range(1, STEPS + 1))
    assert losses(1) == list(range(1, STEPS + 1))  # every step once, none lost in the cut
    assert second.status == "succeeded"
    print(
        f"\ntraining through a 15 s database cut and broker restart at stage 2 step "
        f"{steps_before}: finished {finished_after:.1f} s after both came back, one attempt"
    )
