"""A coldstart job over the API, run by the real captioner and reasoner worker processes
on PostgreSQL and Redis with the stand-in teachers — and the same after SIGKILLs."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.db.models import GenerationRecord
from shared.db.session import Database
from shared.storage import open_store
from tests.coldstart_support import (
    WorkerPool,
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
SETTLED = ("kept", "rejected", "failed")


@pytest.fixture
def cluster(
    pg_migrated: str, redis_url: str, tmp_path: Path, teachers: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    """The gateway (real Celery dispatcher) and a worker pool on one database and broker."""
    artifact_uri = (tmp_path / "artifacts").as_uri()
    app, db, key = gateway_app(pg_migrated, redis_url, artifact_uri, tmp_path / "data")
    with (
        workers(pg_migrated, redis_url, artifact_uri, tmp_path / "logs") as pool,
        TestClient(app) as client,
    ):
        yield {
            "client": client,
            "key": key,
            "db": db,
            "pool": pool,
            "store": open_store(artifact_uri),
            "data": tmp_path / "data",
            "teachers": teachers,
        }


def _register(cluster: dict[str, Any], n: int) -> tuple[str, dict[str, str]]:
    """Register the first ``n`` toy items through the API; the dataset ID and gold answers."""
    toy = cluster["teachers"]["toy"]
    return register_toy(cluster["client"], cluster["key"], toy, cluster["data"], n)


def _submit(cluster: dict[str, Any], dataset_id: str, chunk_size: int) -> str:
    spec = coldstart_spec(cluster["teachers"], dataset_id, chunk_size)
    response = cluster["client"].post("/v1/jobs", headers=auth(cluster["key"]), json={"spec": spec})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def _records(db: Database, job_id: str) -> list[GenerationRecord]:
    with db.session() as session:
        query = select(GenerationRecord).where(GenerationRecord.job_id == uuid.UUID(job_id))
        return list(session.scalars(query))


def test_coldstart_job_through_the_api_and_real_workers(cluster: dict[str, Any]) -> None:
    pool: WorkerPool = cluster["pool"]
    client, key = cluster["client"], cluster["key"]
    pool.start("captioner")
    pool.start("reasoner")
    dataset_id, gold = _register(cluster, 12)
    job_id = _submit(cluster, dataset_id, chunk_size=4)

    job = wait_for_job(client, key, job_id, timeout_s=240, alive=pool.check_alive)
    assert job["status"] == "succeeded", job["error"]
    assert (job["items_total"], job["items_done"], job["items_failed"]) == (12, 12, 0)
    funnel = job["counters"]
    assert (funnel["items_in"], funnel["captioned"], funnel["described"]) == (12, 12, 12)
    assert funnel["reasoned"] == 12
    # How many survive depends on the stand-in teachers (a weak describer's colour mistakes
    # end as wrong answers); every item is accounted for either way.
    assert funnel["kept"] == job["output"]["funnel"]["kept"] >= 1
    assert funnel["kept"] + sum(funnel["rejected"].values()) == 12
    assert funnel["tokens"]["pseudo_cot"]["prompt"] > 0
    assert funnel["tokens"]["reasoning"]["completion"] > 0

    records = _records(cluster["db"], job_id)
    assert len(records) == 12
    assert all(r.status in ("kept", "rejected") for r in records)
    assert all(r.prompt_versions == {"pseudo_cot": "v1", "description": "v1", "reasoning": "v1"}
               for r in records)  # fmt: skip
    assert all(r.status != "rejected" or r.reject_reason for r in records)

    export = cluster["store"].local_path(job["output"]["export_uri"])
    rows = check_export(export, gold)
    assert len(rows) == funnel["kept"]
    assert not any("description" in r["messages"][1]["content"].lower() for r in rows)

    # The cold dataset, with its lineage, as the API lists it.
    listed = client.get("/v1/datasets?kind=cold", headers=auth(key)).json()
    (cold,) = listed["items"]
    assert (cold["id"], cold["name"], cold["kind"]) == (
        job["output"]["dataset_id"],
        "toy-cold",
        "cold",
    )
    assert (cold["size"], cold["produced_by_job_id"]) == (len(rows), job_id)
    assert cold["meta"]["source_dataset_id"] == dataset_id
    cold_items = client.get(f"/v1/datasets/{cold['id']}/items?limit=50", headers=auth(key)).json()
    assert cold_items["total"] == len(rows)
    assert {i["extra"]["source_item_id"] for i in cold_items["items"]} <= set(gold)

    # The artifacts, listed for the job and downloadable.
    artifacts = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth(key)).json()
    by_kind = {a["kind"]: a for a in artifacts}
    assert set(by_kind) == {"dataset_export", "report"}
    report = client.get(f"/v1/artifacts/{by_kind['report']['id']}/download", headers=auth(key))
    assert report.status_code == 200
    assert json.loads(report.content)["kept"] == funnel["kept"]
    bundle = client.get(
        f"/v1/artifacts/{by_kind['dataset_export']['id']}/download", headers=auth(key)
    )
    assert bundle.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(bundle.content), mode="r:") as tar:
        names = set(tar.getnames())
        member = next(n for n in names if n.endswith("/cold.json"))
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert json.loads(extracted.read()) == rows
    prefix = member.rsplit("/", 1)[0]
    assert {f"{prefix}/dataset_info.json", f"{prefix}/cold.parquet"} <= names
    assert all(f"{prefix}/{image}" in names for row in rows for image in row["images"])


def _wait(what: str, check: Any, pool: WorkerPool, timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        pool.check_alive()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_workers_lose_and_repeat_nothing(cluster: dict[str, Any]) -> None:
    pool: WorkerPool = cluster["pool"]
    db: Database = cluster["db"]
    client, key = cluster["client"], cluster["key"]
    n = 24
    dataset_id, gold = _register(cluster, n)
    captioner = pool.start("captioner")
    job_id = _submit(cluster, dataset_id, chunk_size=2)

    # The captioner dies between the two calls of a chunk: some records hold a Pseudo-CoT
    # and no description yet. Its message comes back after the visibility timeout.
    def mid_caption() -> bool:
        steps = [r.step for r in _records(db, job_id)]
        return "captioned" in steps and steps.count("described") < n - 2

    captioner.kill_when(mid_caption, "a chunk captioned and not described")
    stranded = [r.item_id for r in _records(db, job_id) if r.step == "captioned"]
    pool.start("captioner")
    _wait(
        "every item described",
        lambda: [r.step for r in _records(db, job_id)].count("described") == n,
        pool,
    )

    # The reasoner dies after storing a chunk's reasoning and before judging it: those
    # records are reasoned but unsettled, with a backlog of chunks behind them.
    reasoner = pool.start("reasoner")

    def mid_reason() -> bool:
        return any(r.step == "reasoned" and r.status == "pending" for r in _records(db, job_id))

    reasoner.kill_when(mid_reason, "a chunk reasoned and not judged")
    unjudged = [r.item_id for r in _records(db, job_id) if r.status == "pending"]
    pool.start("reasoner")

    job = wait_for_job(client, key, job_id, timeout_s=240, alive=pool.check_alive)
    assert job["status"] == "succeeded", job["error"]
    assert stranded, "the captioner was not killed mid-chunk"
    assert unjudged, "the reasoner was not killed mid-chunk"
    assert job["items_total"] == n
    assert job["items_done"] + job["items_failed"] == n
    assert job["items_failed"] == 0

    check_one_record_per_item(db, job_id, gold)
    records = _records(db, job_id)
    assert all(r.status in SETTLED for r in records)
    kept = sum(r.status == "kept" for r in records)
    assert job["counters"]["kept"] == kept

    export = cluster["store"].local_path(job["output"]["export_uri"])
    rows = check_export(export, gold)  # also: no source item twice
    table = pq.read_table(export / "cold.parquet").to_pylist()
    assert len(rows) == len(table) == kept
    kept_ids = {str(r.item_id) for r in records if r.status == "kept"}
    assert {t["source_item_id"] for t in table} == kept_ids
    listed = client.get("/v1/datasets?kind=cold", headers=auth(key)).json()
    assert listed["total"] == 1  # assembled exactly once
