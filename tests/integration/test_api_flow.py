"""The API as a team uses it, on the real PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import teams
from shared.db.session import Database
from tests.helpers import write_image

pytestmark = pytest.mark.integration


def _coldstart_spec(dataset_id: str, chunk_size: int = 2) -> dict[str, Any]:
    engine = {"engine": "transformers", "model": "/models/tiny-vlm"}
    return {
        "kind": "coldstart",
        "dataset_id": dataset_id,
        "captioner": engine,
        "reasoner": {**engine, "model": "/models/tiny-lm"},
        "chunk_size": chunk_size,
    }


def write_dataset(folder: Path, rows: int = 5) -> Path:
    lines = []
    for i in range(rows):
        write_image(folder / "img" / f"{i}.png", ["red", "green", "blue"][i % 3])
        lines.append({"image": f"img/{i}.png", "question": f"Q{i}?", "answer": str(i), "task": "t"})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def stack(pg_migrated: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = GatewaySettings(
        database_url=pg_migrated,
        redis_url=redis_url,
        artifact_uri=(tmp_path / "artifacts").as_uri(),
        import_roots=[tmp_path / "data"],
    )
    app = create_app(settings)
    db = app.state.context.db
    with db.session() as session:
        team_a = teams.create_team(session, name="alpha")
        key_a = teams.create_key(session, team=team_a).secret
        team_b = teams.create_team(session, name="beta")
        key_b = teams.create_key(session, team=team_b).secret
    write_dataset(tmp_path / "data" / "toy")
    with TestClient(app) as client:
        yield {"client": client, "a": key_a, "b": key_b, "redis": redis_url, "db": db}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def caption_messages(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    return [json.loads(raw) for raw in client.lrange("caption", 0, -1)]


def test_team_flow_register_create_list_get_cancel(stack: dict[str, Any]) -> None:
    client, key = stack["client"], stack["a"]
    created = client.post(
        "/v1/datasets", headers=auth(key), json={"name": "toy", "path": "toy/train.jsonl"}
    )
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["size"] == 5
    assert dataset["skipped"] == []

    items = client.get(f"/v1/datasets/{dataset['id']}/items?limit=2&offset=2", headers=auth(key))
    assert items.status_code == 200
    page = items.json()
    assert [i["question"] for i in page["items"]] == ["Q2?", "Q3?"]
    assert page["total"] == 5
    assert page["next_offset"] == 4
    assert page["items"][0]["images"][0].startswith("file://")
    assert page["items"][0]["extra"]["task"] == "t"

    job = client.post("/v1/jobs", headers=auth(key), json={"spec": _coldstart_spec(dataset["id"])})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert job.json()["status"] == "queued"
    assert job.json()["items_total"] == 5

    listed = client.get("/v1/jobs?kind=coldstart&status=queued", headers=auth(key)).json()
    assert [j["id"] for j in listed["items"]] == [job_id]
    assert client.get("/v1/jobs?kind=sft", headers=auth(key)).json()["total"] == 0
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["id"] == job_id
    assert client.get(f"/v1/jobs/{job_id}/stages", headers=auth(key)).json() == []
    assert client.get(f"/v1/jobs/{job_id}/metrics", headers=auth(key)).json() == []

    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert again.status_code == 409


def test_job_messages_reach_the_caption_queue_after_commit(stack: dict[str, Any]) -> None:
    client, key = stack["client"], stack["a"]
    dataset = client.post(
        "/v1/datasets", headers=auth(key), json={"name": "toy", "path": "toy/train.jsonl"}
    ).json()
    assert caption_messages(stack["redis"]) == []

    # The dispatcher checks, from a separate connection, that the job is committed
    # at the moment each message leaves.
    db: Database = stack["db"]
    real = db.dispatcher
    seen: list[tuple[str, bool]] = []
    observer = create_engine(db.url)

    class Checking:
        def send(self, task_name: str, args: list[Any]) -> None:
            with observer.connect() as connection:
                row = connection.execute(
                    text("SELECT status FROM jobs WHERE id = :id"), {"id": args[0]}
                ).first()
            seen.append((task_name, row is not None))
            real.send(task_name, args)

    db.dispatcher = Checking()
    try:
        job = client.post(
            "/v1/jobs", headers=auth(key), json={"spec": _coldstart_spec(dataset["id"])}
        ).json()
    finally:
        db.dispatcher = real
        observer.dispose()
    assert seen == [("caption.batch", True)] * 3  # 5 items in chunks of 2
    messages = caption_messages(stack["redis"])
    assert len(messages) == 3
    assert {m["headers"]["task"] for m in messages} == {"caption.batch"}
    assert redis.Redis.from_url(stack["redis"]).llen("train") == 0
    bodies = [json.loads(__import__("base64").b64decode(m["body"]))[0] for m in messages]
    assert all(body[0] == job["id"] for body in bodies)
    assert sorted(len(body[1]) for body in bodies) == [1, 2, 2]


def test_rolled_back_job_sends_nothing(stack: dict[str, Any]) -> None:
    from shared.db.session import enqueue_after_commit

    db: Database = stack["db"]

    def failing_unit_of_work() -> None:
        with db.session() as session:
            enqueue_after_commit(session, "caption.batch", ["x", []])
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        failing_unit_of_work()
    assert caption_messages(stack["redis"]) == []


def test_auth_and_team_isolation(stack: dict[str, Any]) -> None:
    client = stack["client"]
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers=auth("vr1_nope_nope")).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    dataset = client.post(
        "/v1/datasets", headers=auth(stack["a"]), json={"name": "toy", "path": "toy/train.jsonl"}
    ).json()
    job = client.post(
        "/v1/jobs", headers=auth(stack["a"]), json={"spec": _coldstart_spec(dataset["id"])}
    ).json()
    other = auth(stack["b"])
    assert client.get(f"/v1/jobs/{job['id']}", headers=other).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/stages", headers=other).status_code == 404
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=other).status_code == 404
    assert client.get("/v1/jobs", headers=other).json()["total"] == 0
    # Team B cannot start a job on team A's dataset either.
    refused = client.post("/v1/jobs", headers=other, json={"spec": _coldstart_spec(dataset["id"])})
    assert refused.status_code == 422
    assert dataset["id"] in refused.json()["message"]


def test_revoked_key_is_refused(stack: dict[str, Any]) -> None:
    client, key = stack["client"], stack["a"]
    assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
    with stack["db"].session() as session:
        teams.revoke_key(session, prefix=key.split("_")[1])
    response = client.get("/v1/jobs", headers=auth(key))
    assert response.status_code == 401
    assert "revoked" in response.json()["message"]


def test_healthz_reports_database_and_broker(stack: dict[str, Any]) -> None:
    body = stack["client"].get("/healthz").json()
    assert body["status"] == "ok"
    assert body["database"] is True
    assert body["broker"] is True
