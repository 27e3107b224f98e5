"""``vr1 worker embedded`` runs what a broker-less gateway takes, on the home's SQLite file:
a coldstart job submitted over HTTP finishes even when the worker is SIGKILLed mid-chunk
and started again, each item counted and exported once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.db import migrate
from shared.db.models import GenerationRecord
from shared.db.session import Database
from shared.storage import open_store
from tests.coldstart_support import (
    auth,
    check_export,
    check_one_record_per_item,
    coldstart_spec,
    gateway_app,
    register_toy,
    wait_for_job,
    workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ITEMS = 8


def _steps(db: Database, job_id: str) -> list[str]:
    with db.session() as session:
        query = select(GenerationRecord.step).where(GenerationRecord.job_id == uuid.UUID(job_id))
        return list(session.scalars(query))


def test_a_killed_embedded_worker_started_again_finishes_the_job_once(
    tmp_path: Path, teachers: dict[str, Path]
) -> None:
    database_url = f"sqlite:///{tmp_path / 'home' / 'vr1.db'}"
    (tmp_path / "home").mkdir()
    migrate.upgrade(database_url)
    artifact_uri = (tmp_path / "artifacts").as_uri()
    app, db, key = gateway_app(database_url, "", artifact_uri, tmp_path / "data")
    stale = {"VR1_STALE_AFTER_S": "3", "VR1_RECONCILE_INTERVAL_S": "1"}
    with (
        TestClient(app) as client,
        workers(database_url, "", artifact_uri, tmp_path / "logs", env=stale) as pool,
    ):
        dataset_id, gold = register_toy(client, key, teachers["toy"], tmp_path / "data", ITEMS)
        spec = coldstart_spec(teachers, dataset_id, chunk_size=2)
        created = client.post("/v1/jobs", headers=auth(key), json={"spec": spec})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        first = pool.start("embedded")
        first.kill_when(
            lambda: "captioned" in _steps(db, job_id), "a chunk captioned and not described"
        )
        pool.start("embedded")
        job = wait_for_job(client, key, job_id, timeout_s=300, alive=pool.check_alive)

    assert job["status"] == "succeeded", job["error"]
    assert (job["items_total"], job["items_done"], job["items_failed"]) == (ITEMS, ITEMS, 0)
    check_one_record_per_item(db, job_id, gold)
    export = open_store(artifact_uri).local_path(job["output"]["export_uri"])
    rows = check_export(export, gold)
    assert len(rows) == job["counters"]["kept"]
