"""What a job did, read over HTTP: its event log, the completions GRPO kept, a coldstart
job's records and live funnel, an eval job's results, and item images.

Jobs run in the embedded runner on a real PostgreSQL (training runs as real processes);
the gateway is served by uvicorn on the same database and store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.signals import task_retry
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from entrypoints.bootstrap import Embedded, embedded
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import reconcile, teams, worker
from shared.contracts.specs import ColdstartSpec, EvalSpec
from shared.db.models import Item, Team
from shared.db.session import Database
from shared.events import ITEM_FAILURES_LOGGED
from shared.rewards import InlineVerifier, ScoreItem, Scorer, score
from shared.settings import BaseVR1Settings
from shared.storage import path_from_uri
from tests.coldstart_support import coldstart_spec, register_toy, toy_subset
from tests.helpers import (
    discard_messages,
    free_port,
    serve_app,
    training_toy,
    two_stage_grpo_spec,
)

pytestmark = pytest.mark.integration
SAMPLES_PER_STEP = 3
GRPO_STEPS = 2


@dataclass
class Stack:
    """The embedded platform, a client of the gateway on its database, two teams' keys."""

    platform: Embedded
    http: httpx.Client
    key: str
    other_key: str
    root: Path

    def get(self, path: str, *, key: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return self.http.get(path, headers=headers, params=params)

    def ok(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, spec: dict[str, Any]) -> str:
        headers = {"Authorization": f"Bearer {self.key}"}
        response = self.http.post("/v1/jobs", headers=headers, json={"spec": spec})
        assert response.status_code == 201, response.text
        job_id: str = response.json()["id"]
        return job_id

    def events(self, job_id: str) -> list[dict[str, Any]]:
        page = self.ok(f"/v1/jobs/{job_id}/events", limit=500)
        assert page["next_offset"] is None
        items: list[dict[str, Any]] = page["items"]
        return items


@pytest.fixture(scope="module")
def stack(pg_module: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded platform on a migrated PostgreSQL, and the gateway on the same database
    and store served by uvicorn, shared by the module's tests."""
    root = tmp_path_factory.mktemp("events")
    artifacts = (root / "artifacts").as_uri()
    platform = embedded(
        BaseVR1Settings(home=root / "home", database_url=pg_module, artifact_uri=artifacts)
    )
    settings = GatewaySettings(
        database_url=pg_module, artifact_uri=artifacts, import_roots=[root / "data"]
    )
    app = create_app(settings)  # no broker: submitted work waits in the outbox for drain()
    team_id = platform.team().id
    with platform.db.session() as session:
        team = session.get(Team, team_id)
        assert team is not None
        key = teams.create_key(session, team=team).secret
        other = teams.create_team(session, name="others")
        other_key = teams.create_key(session, team=other).secret
    with serve_app(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        yield Stack(platform, http, key, other_key, root)


# --- a coldstart job with many bad items -------------------------------------------------

GOOD = {0, 9, 18, 27}  # one per chunk of 8
MISSING = {5, 14}  # image file gone: fails at the first engine call
N_ITEMS = 28  # the other 22 have an empty question: failed before any engine call


def _spoil(stack: Stack, dataset_id: str) -> None:
    with stack.platform.db.session() as session:
        items = session.scalars(select(Item).where(Item.dataset_id == uuid.UUID(dataset_id)))
        for item in items:
            if item.idx in MISSING:
                path_from_uri(item.images[0]).unlink()
            elif item.idx not in GOOD:
                session.execute(update(Item).where(Item.id == item.id).values(question=""))


@pytest.fixture(scope="module")
def coldstart_job(stack: Stack, teachers: dict[str, Path]) -> dict[str, Any]:
    """A finished coldstart job of 28 items, 24 of them bad, and its funnel after each
    message the runner handled."""
    data = stack.root / "data"
    dataset_id, _gold = register_toy(stack.http, stack.key, teachers["toy"], data, N_ITEMS)
    _spoil(stack, dataset_id)
    job_id = stack.submit(coldstart_spec(teachers, dataset_id, chunk_size=8))
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def look(_task: str, _args: list[Any]) -> None:
        seen.append((stack.ok(f"/v1/jobs/{job_id}/funnel"), stack.ok(f"/v1/jobs/{job_id}")))

    stack.platform.on_message = look
    try:
        stack.platform.drain()
    finally:
        stack.platform.on_message = None
    job = stack.ok(f"/v1/jobs/{job_id}")
    assert job["status"] == "succeeded", job["error"]
    return {"job": job, "dataset_id": dataset_id, "seen": seen}


def test_a_coldstart_job_tells_its_story_in_order(
    stack: Stack, coldstart_job: dict[str, Any]
) -> None:
    job = coldstart_job["job"]
    log = stack.events(job["id"])
    types = [e["type"] for e in log]
    assert types[:3] == ["created", "queued", "started"]
    assert types[-1] == "succeeded"
    assert log[0]["data"] == {"kind": "coldstart", "name": "coldstart", "parent_id": None}
    assert log[1]["data"] == {"chunks": 4, "items": N_ITEMS}
    ids = [e["id"] for e in log]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [e["created_at"] for e in log] == sorted(e["created_at"] for e in log)

    # 24 items failed; the first ITEM_FAILURES_LOGGED are logged one by one, then a notice.
    failed = [e for e in log if e["type"] == "item.failed"]
    assert job["items_failed"] == 24 > ITEM_FAILURES_LOGGED == len(failed)
    assert types.count("info") == 1
    assert types.index("info") > max(i for i, t in enumerate(types) if t == "item.failed")
    assert log[-1]["data"]["items_failed"] == 24
    assert log[-1]["data"]["items_done"] == job["items_done"] == 4
    records = stack.ok(f"/v1/jobs/{job['id']}/records", limit=100)["items"]
    idx_of = {r["item_id"]: r["idx"] for r in records}
    for event in failed:
        data = event["data"]
        assert event["level"] == "warning"
        assert data["idx"] == idx_of[data["item_id"]] not in GOOD
        assert data["reason"] == (
            "pseudo_cot_image_unreadable" if data["idx"] in MISSING else "empty_question"
        )
        assert event["message"].startswith(f"Item {data['idx']} failed: ")


def test_a_coldstart_job_with_nothing_kept_ends_failed_in_its_log(
    stack: Stack, coldstart_job: dict[str, Any], teachers: dict[str, Path]
) -> None:
    """The job is claimed as succeeded, then failed by its assembly (nothing was kept): the
    log's last word is the outcome it settled on."""
    toy_subset(teachers["toy"], stack.root / "data" / "empty", 3)
    body = {"name": "all-empty", "path": "empty/train.jsonl"}
    headers = {"Authorization": f"Bearer {stack.key}"}
    created = stack.http.post("/v1/datasets", headers=headers, json=body)
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    with stack.platform.db.session() as session:
        query = update(Item).where(Item.dataset_id == uuid.UUID(dataset_id))
        session.execute(query.values(question=""))
    job_id = stack.submit(coldstart_spec(teachers, dataset_id, chunk_size=8))
    stack.platform.drain()
    job = stack.ok(f"/v1/jobs/{job_id}")
    assert job["status"] == "failed"
    log = stack.events(job_id)
    failures = ["item.failed"] * 3
    assert [e["type"] for e in log] == ["created", "queued", "started", *failures, "failed"]
    assert (log[-1]["level"], log[-1]["message"]) == ("error", job["error"])
    assert log[-1]["data"] == {"items_total": 3, "items_done": 0, "items_failed": 3}


def test_the_event_log_pages_filters_and_follows(
    stack: Stack, coldstart_job: dict[str, Any]
) -> None:
    job_id = coldstart_job["job"]["id"]
    every = stack.events(job_id)
    path = f"/v1/jobs/{job_id}/events"
    paged: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = stack.ok(path, limit=7, offset=offset)
        assert page["total"] == len(every)
        paged += page["items"]
        offset = page["next_offset"]
    assert paged == every
    # A client polling with the last ID it saw gets exactly what came after.
    assert stack.ok(path, after=every[9]["id"])["items"] == every[10:]
    assert stack.ok(path, after=every[-1]["id"])["items"] == []
    kinds = stack.ok(path, type=["item.failed", "succeeded"])
    assert kinds["total"] == ITEM_FAILURES_LOGGED + 1
    assert stack.ok(path, level="warning")["total"] == ITEM_FAILURES_LOGGED
    assert stack.ok(path, level="error")["total"] == 0

    assert stack.get(path, key=stack.other_key).status_code == 404
    assert stack.get(f"/v1/jobs/{uuid.uuid4()}/events").status_code == 404
    refused = stack.get(path, type="no.such.type")
    assert refused.status_code == 422
    assert "type" in refused.json()["message"]


def test_the_funnel_counts_live_and_agrees_with_the_final_report(
    stack: Stack, coldstart_job: dict[str, Any]
) -> None:
    job = coldstart_job["job"]
    funnel = stack.ok(f"/v1/jobs/{job['id']}/funnel")
    final = job["output"]["funnel"]
    for key in ("items_in", "captioned", "described", "reasoned", "verified", "kept"):
        assert funnel[key] == final[key], key
    assert (funnel["rejected"], funnel["failed"]) == (final["rejected"], final["failed"])
    assert funnel["failed"] == {"empty_question": 22, "pseudo_cot_image_unreadable": 2}
    assert funnel["errors"] == {"the question is empty": 22, "pseudo_cot_image_unreadable": 2}
    assert funnel["pending"] == 0
    # While the job ran, every look added up, and agreed with the job's own counters.
    seen = coldstart_job["seen"]
    assert len(seen) >= 8  # 4 captioner and 4 reasoner chunks at least
    for live, state in seen:
        settled = live["kept"] + sum(live["rejected"].values()) + sum(live["failed"].values())
        assert settled + live["pending"] == N_ITEMS
        assert settled == state["items_done"] + state["items_failed"]
        assert live["captioned"] >= live["described"] >= live["reasoned"] >= live["verified"]
    assert [s[0]["pending"] for s in seen] == sorted((s[0]["pending"] for s in seen), reverse=True)
    assert seen[0][0]["pending"] > 0


def test_records_list_every_item_with_its_outputs_and_images(
    stack: Stack, coldstart_job: dict[str, Any]
) -> None:
    job_id = coldstart_job["job"]["id"]
    path = f"/v1/jobs/{job_id}/records"
    page = stack.ok(path, limit=100)
    assert page["total"] == N_ITEMS
    records = page["items"]
    assert [r["idx"] for r in records] == list(range(N_ITEMS))
    good = [r for r in records if r["idx"] in GOOD]
    assert all(r["status"] in ("kept", "rejected") and r["reasoning"] for r in good)
    assert all(r["question"] == "" for r in records if r["idx"] not in GOOD | MISSING)
    assert stack.ok(path, status="failed")["total"] == 24
    assert stack.ok(path, reason="empty_question")["total"] == 22
    second = stack.ok(path, limit=5, offset=5)
    assert [r["idx"] for r in second["items"]] == [5, 6, 7, 8, 9]
    assert second["next_offset"] == 10
    assert stack.get(path, status="lost").status_code == 422

    # An image, as its URL in the record names it: the stored file's bytes.
    (url,) = good[0]["images"]
    image = stack.get(url)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.headers["cache-control"] == "private, max-age=3600"
    with stack.platform.db.session() as session:
        item = session.get(Item, uuid.UUID(good[0]["item_id"]))
        assert item is not None
        assert image.content == path_from_uri(item.images[0]).read_bytes()
    assert stack.get(url, key=stack.other_key).status_code == 404
    assert stack.get(url.rsplit("/", 1)[0] + "/1").status_code == 404
    assert stack.get(f"/v1/items/{uuid.uuid4()}/images/0").status_code == 404
    (gone,) = records[5]["images"]
    assert stack.get(gone).status_code == 404  # its file was removed


# --- a GRPO job of two stages, then an eval of its checkpoint ---------------------------


@pytest.fixture(scope="module")
def grpo_job(stack: Stack) -> dict[str, Any]:
    toy = training_toy(stack.platform, stack.root / "toy")
    spec = two_stage_grpo_spec(toy, str(toy["student"]), steps=GRPO_STEPS)
    spec = spec.model_copy(update={"samples_per_step": SAMPLES_PER_STEP})
    job_id = stack.submit(spec.model_dump(mode="json"))
    stack.platform.drain()
    job = stack.ok(f"/v1/jobs/{job_id}")
    assert job["status"] == "succeeded", job["error"]
    return {"job": job, "toy": toy}


def test_a_grpo_job_logs_each_stage_and_checkpoint(stack: Stack, grpo_job: dict[str, Any]) -> None:
    job = grpo_job["job"]
    log = stack.events(job["id"])
    assert [(e["type"], e["stage_idx"]) for e in log] == [
        ("created", None),
        ("queued", None),
        ("started", None),
        ("stage.started", 0),
        ("checkpoint.saved", 0),
        ("stage.finished", 0),
        ("stage.started", 1),
        ("checkpoint.saved", 1),
        ("stage.finished", 1),
        ("succeeded", None),
    ]
    assert log[2]["data"] == {"attempt": 1, "launcher": "local", "processes": 1}
    stages = stack.ok(f"/v1/jobs/{job['id']}/stages")
    started = [e for e in log if e["type"] == "stage.started"]
    assert [(e["data"]["cap"], e["data"]["group_size"]) for e in started] == [(16, 4), (32, 2)]
    assert started[1]["message"] == "Stage 2 (32 tokens × 2) started"
    saved = [e for e in log if e["type"] == "checkpoint.saved"]
    assert [e["data"]["uri"] for e in saved] == [s["checkpoint_uri"] for s in stages]
    assert [e["data"]["step"] for e in saved] == [GRPO_STEPS, GRPO_STEPS]
    finished = [e for e in log if e["type"] == "stage.finished"]
    assert all(e["data"]["status"] == "succeeded" for e in finished)
    for event, stage in zip(finished, stages, strict=True):
        assert event["data"]["summary"]["reward_mean"] == pytest.approx(
            stage["summary"]["reward_mean"]
        )


def test_samples_are_real_completions_scored_as_the_trainer_scored_them(
    stack: Stack, grpo_job: dict[str, Any]
) -> None:
    job_id = grpo_job["job"]["id"]
    path = f"/v1/jobs/{job_id}/samples"
    page = stack.ok(path, limit=100)
    samples = page["items"]
    # 2 prompts x 4 per step in stage 1 (one sample per prompt), 4 x 2 in stage 2 (3 kept).
    per_step = {(0, s): 2 for s in range(1, GRPO_STEPS + 1)}
    per_step |= {(1, s): SAMPLES_PER_STEP for s in range(1, GRPO_STEPS + 1)}
    counted: dict[tuple[int, int], int] = {}
    for sample in samples:
        where = (sample["stage_idx"], sample["step"])
        counted[where] = counted.get(where, 0) + 1
    assert counted == per_step
    assert page["total"] == sum(per_step.values())
    order = [(s["stage_idx"], s["step"], s["idx"]) for s in samples]
    assert order == sorted(order)
    # Metrics and samples share their step numbers.
    steps = {(m["stage_idx"], m["step"]) for m in stack.ok(f"/v1/jobs/{job_id}/metrics")}
    assert set(counted) <= steps

    with stack.platform.db.session() as session:
        items = {str(i.id): i for i in session.scalars(select(Item))}
    scorer = Scorer(InlineVerifier())
    caps = {0: 16, 1: 32}
    for where in per_step:
        here = [s for s in samples if (s["stage_idx"], s["step"]) == where]
        assert len({s["item_id"] for s in here}) == len(here)  # different prompts
    for sample in samples:
        item = items[sample["item_id"]]
        assert (sample["prompt"], sample["answer"]) == (item.question, item.answer)
        assert 1 <= sample["length"] <= caps[sample["stage_idx"]]
        (again,) = score("hfrrf", [ScoreItem(sample["completion"], item.answer)], scorer=scorer)
        assert sample["reward"] == again.reward
        assert (sample["correct"], sample["well_formed"]) == (again.answer_ok, again.format_ok)
        assert sample["reason"] == again.reason
        assert sample["images"] == [f"/v1/items/{item.id}/images/0"]
    image = stack.get(samples[0]["images"][0])
    assert image.status_code == 200
    assert image.content == path_from_uri(items[samples[0]["item_id"]].images[0]).read_bytes()

    second = stack.ok(path, stage=1)
    assert {s["stage_idx"] for s in second["items"]} == {1}
    assert second["total"] == SAMPLES_PER_STEP * GRPO_STEPS
    one = stack.ok(path, stage=0, step=2)
    assert [(s["stage_idx"], s["step"]) for s in one["items"]] == [(0, 2), (0, 2)]
    assert stack.ok(path, stage=5)["total"] == 0
    assert stack.get(path, key=stack.other_key).status_code == 404


def test_eval_results_and_reads_of_the_wrong_kind(
    stack: Stack, grpo_job: dict[str, Any], coldstart_job: dict[str, Any]
) -> None:
    rl = grpo_job["toy"]["rl"]
    spec = {
        "kind": "eval",
        "model": grpo_job["job"]["output"]["checkpoint_uri"],
        "dataset_ids": [rl],
        "limit": 4,
        "max_new_tokens": 8,
        "max_tries": 1,
    }
    job_id = stack.submit(spec)
    stack.platform.drain()
    assert stack.ok(f"/v1/jobs/{job_id}")["status"] == "succeeded"
    path = f"/v1/jobs/{job_id}/results"
    results = stack.ok(path)
    assert results["total"] == 4
    rows = results["items"]
    assert [r["idx"] for r in rows] == [0, 1, 2, 3]
    assert all(r["dataset_id"] == rl and len(r["images"]) == 1 for r in rows)
    right = stack.ok(path, correct=True)["total"]
    wrong = stack.ok(path, correct=False)["total"]
    assert right + wrong == sum(r["correct"] is not None for r in rows)
    assert right == sum(r["correct"] is True for r in rows)
    assert stack.ok(path, dataset_id=str(uuid.uuid4()))["total"] == 0

    coldstart_id, grpo_id = coldstart_job["job"]["id"], grpo_job["job"]["id"]
    for wrong_kind in (
        f"/v1/jobs/{grpo_id}/records",
        f"/v1/jobs/{grpo_id}/funnel",
        f"/v1/jobs/{coldstart_id}/samples",
        f"/v1/jobs/{coldstart_id}/results",
        f"/v1/jobs/{job_id}/samples",
    ):
        refused = stack.get(wrong_kind)
        assert refused.status_code == 409, wrong_kind
        assert "job" in refused.json()["message"]


def test_a_task_retried_after_a_transient_error_says_so_in_its_jobs_log(
    stack: Stack, grpo_job: dict[str, Any]
) -> None:
    """Celery's own retry path (run eagerly): the first run meets a dropped database
    connection, the second succeeds, and the job's log has one ``retried`` event; one that
    could not be written (the database away) is written when the task runs again."""
    model, rl = grpo_job["job"]["output"]["checkpoint_uri"], grpo_job["toy"]["rl"]
    job_id = str(stack.platform.submit(EvalSpec(model=model, dataset_ids=[rl])))
    discard_messages(stack.platform)  # the job itself is not run here
    app = Celery("retry-test", set_as_current=False)
    app.conf.task_always_eager = True
    calls: list[str] = []
    dropped = OperationalError("SELECT 1", {}, ConnectionResetError("server closed it"))

    def flaky(job: str) -> None:
        calls.append(job)
        if len(calls) == 1:
            raise dropped

    worker.register(app, {"test.flaky": flaky})
    retries = worker.RetryLog(app, stack.platform.db)
    task_retry.connect(retries.on_retry, weak=False)
    try:
        assert app.tasks["test.flaky"].apply(args=[job_id]).state == "SUCCESS"
    finally:
        task_retry.disconnect(retries.on_retry)
    assert calls == [job_id, job_id]
    (retried,) = [e for e in stack.events(job_id) if e["type"] == "retried"]
    assert retried["level"] == "warning"
    error = "OperationalError: (builtins.ConnectionResetError) server closed it"
    assert retried["data"] == {"task": "test.flaky", "retry": 1, "error": error}

    # The database is away when the second retry is decided: the event waits, and is
    # written as the retried task starts.
    away = worker.RetryLog(
        app, Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    )
    request = SimpleNamespace(args=[job_id], retries=1, id="task-1")
    before = stack.events(job_id)
    away.on_retry(sender=app.tasks["test.flaky"], request=request, reason=dropped)
    assert stack.events(job_id) == before
    away.db = stack.platform.db
    away.on_prerun(task_id="task-1")
    assert stack.events(job_id)[-1]["data"] == {"task": "test.flaky", "retry": 2, "error": error}
    assert away.waiting == {}
    _cancel(stack, job_id)


def _cancel(stack: Stack, job_id: str) -> None:
    """Cancel a job left queued: it ends with a ``cancelled`` event, and no sweep resends it."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    assert stack.http.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    last = stack.events(job_id)[-1]
    assert (last["type"], last["level"]) == ("cancelled", "warning")


def test_work_the_reconciler_sends_again_is_in_the_jobs_log(
    stack: Stack, coldstart_job: dict[str, Any], teachers: dict[str, Path]
) -> None:
    spec = coldstart_spec(teachers, coldstart_job["dataset_id"], chunk_size=8)
    job_id = str(stack.platform.submit(ColdstartSpec.model_validate(spec)))
    discard_messages(stack.platform)  # lost before any worker took them
    resent = reconcile.sweep(stack.platform.db, reconcile.InFlight(), stale_after_s=0.0)
    discard_messages(stack.platform)
    assert (resent.items, resent.messages, resent.jobs) == (N_ITEMS, 4, {job_id})
    types = [e["type"] for e in stack.events(job_id)]
    assert types == ["created", "queued", "retried"]
    retried = stack.events(job_id)[-1]
    assert retried["level"] == "warning"
    assert retried["data"] == {"task": "caption.batch", "items": N_ITEMS, "messages": 4}
    _cancel(stack, job_id)
