"""Bad input gets a 4xx that names the field or row, and nothing is half-written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import teams
from shared.db.models import Dataset, Item, Job
from tests.helpers import RecordingDispatcher, write_image

pytestmark = pytest.mark.integration


@pytest.fixture
def api(pg_migrated: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = GatewaySettings(
        database_url=pg_migrated,
        artifact_uri=(tmp_path / "artifacts").as_uri(),
        import_roots=[tmp_path / "data"],
    )
    dispatcher = RecordingDispatcher()
    app = create_app(settings, dispatcher=dispatcher)
    with app.state.context.db.session() as session:
        key = teams.create_key(session, team=teams.create_team(session, name="t")).secret
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield {
            "client": client,
            "db": app.state.context.db,
            "data": tmp_path / "data",
            "artifacts": tmp_path / "artifacts",
            "sent": dispatcher.sent,
        }


def _write_jsonl(folder: Path, rows: list[Any]) -> None:
    write_image(folder / "ok.png")
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")


def _counts(api: dict[str, Any]) -> tuple[int, int, int]:
    with api["db"].session() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(m)) for m in (Dataset, Item, Job)
        )


GOOD = {"image": "ok.png", "question": "What colour?", "answer": "red"}


@pytest.mark.parametrize(
    ("bad_row", "field", "reason"),
    [
        ({"question": "q", "answer": "a"}, "image", "missing"),
        ({"image": "ok.png", "question": "q"}, "answer", "missing"),
        ({"image": "ok.png", "question": "  ", "answer": "a"}, "question", "empty"),
        ({"image": "../outside.png", "question": "q", "answer": "a"}, "image", "escapes"),
        ({"image": "/etc/passwd", "question": "q", "answer": "a"}, "image", "escapes"),
        ({"image": "nope.png", "question": "q", "answer": "a"}, "image", "not found"),
        ({"image": "rows.jsonl", "question": "q", "answer": "a"}, "image", "not a readable"),
        ("{not json", None, "malformed JSON"),
    ],
)
def test_bad_rows_are_reported_by_line_and_nothing_is_written(
    api: dict[str, Any], bad_row: Any, field: str | None, reason: str
) -> None:
    write_image(api["data"] / "outside.png")
    _write_jsonl(api["data"] / "ds", [GOOD, GOOD, bad_row, GOOD])
    response = api["client"].post("/v1/datasets", json={"name": "d", "path": "ds/rows.jsonl"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "dataset_invalid"
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert error["row"] == 3
    assert error["field"] == field
    assert reason in error["reason"]
    assert _counts(api) == (0, 0, 0)
    assert not (api["artifacts"] / "datasets").exists() or not any(
        (api["artifacts"] / "datasets").iterdir()
    )


def test_skip_mode_keeps_good_rows_and_reports_bad_ones(api: dict[str, Any]) -> None:
    _write_jsonl(api["data"] / "ds", [GOOD, {"question": "q", "answer": "a"}, GOOD])
    response = api["client"].post(
        "/v1/datasets", json={"name": "d", "path": "ds/rows.jsonl", "on_error": "skip"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 2
    assert [e["row"] for e in response.json()["skipped"]] == [2]


@pytest.mark.parametrize(
    ("path", "status"),
    [("../etc/passwd", 422), ("/etc/passwd", 422), ("missing.jsonl", 422)],
)
def test_dataset_paths_outside_the_import_roots_are_refused(
    api: dict[str, Any], path: str, status: int
) -> None:
    response = api["client"].post("/v1/datasets", json={"name": "d", "path": path})
    assert response.status_code == status
    assert response.json()["field"] == "path"


def test_hf_parquet_with_embedded_image_bytes_and_column_mapping(api: dict[str, Any]) -> None:
    png = write_image(api["data"] / "tmp.png", "blue").read_bytes()
    table = pa.table(
        {
            "images": [[{"bytes": png, "path": "a.png"}], [{"bytes": png, "path": "b.png"}]],
            "problem": ["<image>What is x?", "<image>What is y?"],
            "answer": ["3", "\\frac{1}{2}"],
        }
    )
    pq.write_table(table, api["data"] / "rl.parquet")
    response = api["client"].post(
        "/v1/datasets",
        json={
            "name": "rl",
            "kind": "rl",
            "path": "rl.parquet",
            "columns": {"image": "images", "question": "problem", "answer": "answer"},
        },
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["size"], dataset["format"], dataset["kind"]) == (2, "parquet", "rl")
    items = api["client"].get(f"/v1/datasets/{dataset['id']}/items").json()["items"]
    assert items[1]["answer"] == "\\frac{1}{2}"
    stored = Path(items[0]["images"][0].removeprefix("file://"))
    assert stored.read_bytes() == png


ENGINE = {"engine": "transformers", "model": "m"}
VLLM = {"engine": "vllm", "model": "m"}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"spec": {"kind": "dance", "dataset_id": "x"}}, "spec"),
        ({"spec": {"kind": "sft", "model": "m", "dataset_id": "x", "epochs": "many"}}, "epochs"),
        ({"spec": {"kind": "sft", "model": "m"}}, "dataset_id"),
        ({"spec": {"kind": "grpo", "model": "m", "dataset_id": "x", "stages": []}}, "stages"),
        ({"spec": {"kind": "sft", "model": "m", "dataset_id": "x", "typo": 1}}, "typo"),
        ({"spec": {"kind": "sft", "model": "m", "dataset_id": "not-a-uuid"}}, "not-a-uuid"),
        ({}, "spec"),
        # What an engine or a rollout engine would silently ignore, or get wrong.
        (
            {
                "spec": {
                    "kind": "coldstart",
                    "dataset_id": "x",
                    "reasoner": ENGINE,
                    "captioner": {**VLLM, "batch_size": 4, "timeout_s": 5},
                }
            },
            "cannot honour batch_size, timeout_s",
        ),
        (
            {
                "spec": {
                    "kind": "coldstart",
                    "dataset_id": "x",
                    "reasoner": ENGINE,
                    "captioner": {**ENGINE, "base_url": "http://h/v1"},
                }
            },
            "cannot honour base_url",
        ),
        (
            {
                "spec": {
                    "kind": "eval",
                    "model": "m",
                    "dataset_ids": ["x"],
                    "engine": "vllm",
                    "batch_size": 64,
                }
            },
            "batch_size",
        ),
        ({"spec": {"kind": "grpo", "model": "m", "dataset_id": "x", "top_p": 0.9}}, "top_p"),
        (
            {"spec": {"kind": "grpo", "model": "m", "dataset_id": "x", "off_policy": {"cap": 3}}},
            "rollout_engine 'vllm'",
        ),
    ],
)
def test_invalid_job_specs_get_422_naming_the_field(
    api: dict[str, Any], body: dict[str, Any], where: str
) -> None:
    response = api["client"].post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert where in response.json()["message"]
    assert _counts(api)[2] == 0
    assert api["sent"] == []


def test_malformed_json_body_is_a_422(api: dict[str, Any]) -> None:
    response = api["client"].post(
        "/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["message"]


def test_unknown_ids_are_404_and_bad_ids_422(api: dict[str, Any]) -> None:
    client = api["client"]
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.get(f"/v1/jobs/{missing}").status_code == 404
    assert client.get(f"/v1/datasets/{missing}/items").status_code == 404
    assert client.get("/v1/jobs/not-a-uuid").status_code == 422
    assert client.get("/v1/jobs?limit=0").status_code == 422
    assert client.get("/v1/jobs?status=sleeping").status_code == 422


def test_a_dataset_name_is_taken_once_per_team(api: dict[str, Any]) -> None:
    _write_jsonl(api["data"] / "ds", [GOOD])
    body = {"name": "d", "path": "ds/rows.jsonl"}
    assert api["client"].post("/v1/datasets", json=body).status_code == 201
    again = api["client"].post("/v1/datasets", json=body)
    assert again.status_code == 409
    assert "already exists" in again.json()["message"]
    assert _counts(api)[0] == 1


@pytest.mark.parametrize(
    "query",
    [
        "/v1/jobs?offset=9223372036854775808",  # beyond 64 bits: the database would refuse
        "/v1/datasets?offset=2147483648",
        "/v1/jobs/00000000-0000-0000-0000-000000000000/metrics?after_step=4294967296",
        "/v1/jobs/00000000-0000-0000-0000-000000000000/metrics?stage=-1",
        "/v1/jobs/00000000-0000-0000-0000-000000000000/metrics?name=loss%00",
        "/v1/jobs?kind=sft%00",
        "/v1/jobs?statuss=running",  # a typo is not silently ignored
    ],
)
def test_out_of_range_nul_and_unknown_query_values_are_422(api: dict[str, Any], query: str) -> None:
    response = api["client"].get(query)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "nul\u0000name", "spec": {"kind": "sft", "model": "m", "dataset_id": "x"}},
        {"spec": {"kind": "sft", "model": "m\u0000", "dataset_id": "x"}},
        {"spec": {"kind": "sft", "model": "m", "dataset_id": "x", "seed\u0000": 1}},
    ],
)
def test_nul_characters_in_a_body_are_422(api: dict[str, Any], body: dict[str, Any]) -> None:
    response = api["client"].post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["message"]
    assert _counts(api)[2] == 0


def test_nul_characters_in_dataset_rows_are_row_errors(api: dict[str, Any]) -> None:
    _write_jsonl(api["data"] / "ds", [GOOD, {**GOOD, "question": "What\u0000colour?"}])
    body = {"name": "d", "path": "ds/rows.jsonl", "on_error": "skip"}
    response = api["client"].post("/v1/datasets", json=body)
    assert response.status_code == 201, response.text
    (skipped,) = response.json()["skipped"]
    assert skipped["row"] == 2
    assert "NUL" in skipped["reason"]
    assert _counts(api)[1] == 1


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "DELETE", "PUT"])
def test_a_wrong_method_names_every_allowed_one(api: dict[str, Any], method: str) -> None:
    response = api["client"].request(method, "/v1/datasets")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"
    one = api["client"].request(method, "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel")
    assert one.headers["Allow"] == "POST"


def test_a_retried_submission_with_its_key_is_one_job(api: dict[str, Any]) -> None:
    _write_jsonl(api["data"] / "ds", [GOOD])
    dataset = api["client"].post("/v1/datasets", json={"name": "d", "path": "ds/rows.jsonl"})
    spec = {"kind": "sft", "model": "m", "dataset_id": dataset.json()["id"], "max_steps": 2}
    key = {"Idempotency-Key": "retry-me"}
    first = api["client"].post("/v1/jobs", json={"spec": spec}, headers=key)
    again = api["client"].post("/v1/jobs", json={"spec": spec}, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _counts(api)[2] == 1
    assert len(api["sent"]) == 1  # the work was queued once
    other = api["client"].post("/v1/jobs", json={"spec": {**spec, "max_steps": 3}}, headers=key)
    assert other.status_code == 409
    assert "different job spec" in other.json()["message"]
    fresh = api["client"].post("/v1/jobs", json={"spec": spec}, headers={"Idempotency-Key": "x2"})
    assert fresh.status_code == 201
    assert _counts(api)[2] == 2


def test_a_database_that_is_down_answers_503(tmp_path: Path) -> None:
    from tests.helpers import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(GatewaySettings(database_url=url, artifact_uri=tmp_path.as_uri()))
    with TestClient(app, raise_server_exceptions=False) as client:
        key = {"Authorization": "Bearer vr1_abcdefgh_secret"}  # well-formed: looked up
        response = client.get("/v1/jobs", headers=key)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"] == "unavailable"
