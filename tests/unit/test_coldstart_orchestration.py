"""Coldstart orchestration on embedded SQLite with a scripted in-repo engine.

The engine here stands in for the model only to exercise the bookkeeping: exactly-once
records, the attempt limit, caching, rejects with reasons, cancellation and assembly.  The same
flow runs on real tiny models and real servers in tests/integration.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from entrypoints.bootstrap import Embedded, embedded
from services.captioner import captioning
from services.reasoner import reasoning
from shared import engines, jobs
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec, EngineSpec
from shared.datasets import register_dataset
from shared.db.models import Artifact, Dataset, GenerationRecord, Item, Job
from shared.engines.base import GenerationRequest, GenerationResult
from shared.settings import BaseVR1Settings
from tests.helpers import discard_messages, write_image

QUESTIONS = ["OK1", "OK2", "WRONG", "EMPTY", "LEAK", "TRUNC", "ERROR", "MISMATCH"]


class ScriptedEngine:
    """Answers by the marker in the question; counts calls per prompt."""

    name = "transformers"
    model_id = "scripted"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._one(r) for r in requests]

    def close(self) -> None:
        """Nothing to release (the real engines let go of threads and connections)."""

    def _one(self, request: GenerationRequest) -> GenerationResult:
        self.calls.append(request.prompt)
        marker = next((q for q in QUESTIONS if q in request.prompt), "")
        if marker == "ERROR":  # what an engine returns once its own retries are spent
            return GenerationResult(error="boom", error_kind="http_500", finish_reason="error")
        if request.prompt.startswith("You see an image"):
            assert request.images, "the Pseudo-CoT call must carry the image"
            return GenerationResult(text="Caption: a shape.\nReasoning: it is 7.", prompt_tokens=9)
        if request.prompt.startswith("Given a image"):
            assert "Caption: a shape." in request.prompt
            return GenerationResult(text="The description: one shape, value 7.", prompt_tokens=11)
        assert not request.images, "the reasoner is text-only"
        return self._reasoning(marker)

    @staticmethod
    def _reasoning(marker: str) -> GenerationResult:
        cot, answer, finish = (
            "The description says the value is 7. So the answer is 7.",
            "7",
            "stop",
        )
        if marker == "WRONG":
            cot, answer = "It is 8. So the answer is 8.", "8"
        elif marker == "EMPTY":
            cot = ""
        elif marker == "LEAK":
            cot = "The answer is given as 7, so it is 7."
        elif marker == "TRUNC":
            finish = "length"
        elif marker == "MISMATCH":
            cot = "Counting carefully, the value is 9."
        return GenerationResult(
            text=f"Final Answer: {answer}",
            reasoning=cot,
            finish_reason=finish,
            prompt_tokens=20,
            completion_tokens=30,
        )


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    engine = ScriptedEngine()
    monkeypatch.setattr(captioning, "engine_for", lambda spec: engine)
    monkeypatch.setattr(reasoning, "engine_for", lambda spec: engine)
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    folder = tmp_path / "data"
    rows = []
    for i, question in enumerate(QUESTIONS):
        write_image(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": f"<image>{question}: value?", "answer": "7"})
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    team = emb.team()
    with emb.db.session() as session:
        request = DatasetCreate(name="src", path=str(folder / "rows.jsonl"))
        dataset, _ = register_dataset(
            session, team=team, request=request, roots=[folder], store=emb.store
        )
    spec = ColdstartSpec(
        dataset_id=str(dataset.id),
        captioner={"engine": "transformers", "model": "scripted"},
        reasoner={"engine": "transformers", "model": "scripted"},
        chunk_size=4,
        max_attempts=2,
    )
    return {"emb": emb, "engine": engine, "spec": spec}


def _records(emb: Embedded, job_id: Any) -> dict[str, GenerationRecord]:
    with emb.db.session() as session:
        rows = session.execute(
            select(GenerationRecord, Item).join(Item).where(GenerationRecord.job_id == job_id)
        ).all()
        return {item.question.split(":")[0].removeprefix("<image>"): rec for rec, item in rows}


def test_job_settles_every_item_with_a_reason_and_exports(platform: dict[str, Any]) -> None:
    emb: Embedded = platform["emb"]
    job = emb.run(platform["spec"])
    assert job.status == "succeeded", job.error
    assert (job.items_total, job.items_done, job.items_failed) == (8, 7, 1)
    records = _records(emb, job.id)
    outcome = {q: (r.status, r.reject_reason) for q, r in records.items()}
    assert outcome == {
        "OK1": ("kept", None),
        "OK2": ("kept", None),
        "WRONG": ("rejected", "wrong_answer"),
        "EMPTY": ("rejected", "empty_cot"),
        "LEAK": ("rejected", "answer_leak"),
        "TRUNC": ("rejected", "truncated"),
        "MISMATCH": ("rejected", "inconsistent"),
        "ERROR": ("failed", "pseudo_cot_http_500"),
    }
    # An engine's error result is final (retries live in the engine): one call, then failed.
    assert records["ERROR"].attempts == 1
    assert sum("ERROR" in prompt for prompt in platform["engine"].calls) == 1
    assert records["OK1"].attempts == 0  # every step finished; none is being tried
    assert records["OK1"].prompt_versions == {
        "pseudo_cot": "v1",
        "description": "v1",
        "reasoning": "v1",
    }
    assert "The image shows the value is 7" in (records["OK1"].reasoning or "")

    funnel = job.output["funnel"]
    assert funnel["items_in"] == 8
    assert (funnel["captioned"], funnel["described"], funnel["reasoned"]) == (7, 7, 7)
    assert (funnel["verified"], funnel["kept"]) == (3, 2)  # MISMATCH verified, then dropped
    assert funnel["failed"] == {"pseudo_cot_http_500": 1}
    assert funnel["tokens"]["reasoning"]["completion"] == 7 * 30

    export = emb.store.local_path(job.output["export_uri"])
    rows = json.loads((export / "cold.json").read_text())
    assert len(rows) == 2
    for row in rows:
        user, assistant = row["messages"]
        assert user["content"].count("<image>") == len(row["images"]) == 1
        assert (export / row["images"][0]).is_file()
        assert assistant["content"].startswith("<think>")
        assert assistant["content"].endswith("<answer>7</answer>")
    info = json.loads((export / "dataset_info.json").read_text())
    (entry,) = info.values()
    assert entry["file_name"] == "cold.json"
    assert entry["formatting"] == "sharegpt"
    table = pq.read_table(export / "cold.parquet").to_pylist()
    assert [t["messages"] for t in table] == [r["messages"] for r in rows]

    with emb.db.session() as session:
        cold = session.get(Dataset, uuid.UUID(job.output["dataset_id"]))
        assert cold is not None
        assert (cold.kind, cold.size, cold.produced_by_job_id) == ("cold", 2, job.id)
        assert session.scalar(select(func.count()).where(Item.dataset_id == cold.id)) == 2
        kinds = set(session.scalars(select(Artifact.kind).where(Artifact.job_id == job.id)))
        assert kinds == {"dataset_export", "report"}


def test_redelivered_chunks_and_reruns_redo_nothing(platform: dict[str, Any]) -> None:
    emb: Embedded = platform["emb"]
    engine: ScriptedEngine = platform["engine"]
    first = emb.run(platform["spec"])
    calls = len(engine.calls)
    with emb.db.session() as session:
        item_ids = [
            str(r.item_id)
            for r in session.scalars(
                select(GenerationRecord).where(GenerationRecord.job_id == first.id)
            )
        ]
    # A redelivered message for a finished chunk changes nothing and calls no model.
    captioning.caption_chunk(emb.db, str(first.id), item_ids[:4])
    reasoning.reason_chunk(emb.db, emb.store, str(first.id), item_ids[:4])
    discard_messages(emb)
    assert len(engine.calls) == calls
    with emb.db.session() as session:
        assert (
            session.scalar(select(func.count()).select_from(Dataset).where(Dataset.kind == "cold"))
            == 1
        )

    # Running the same spec again as a new job is served from the cache, except the
    # item whose every call fails.
    second = emb.run(platform["spec"])
    assert second.status == "succeeded"
    new_calls = engine.calls[calls:]
    assert new_calls
    assert all("ERROR" in prompt for prompt in new_calls)
    assert second.output["funnel"]["kept"] == first.output["funnel"]["kept"]
    assert second.output["funnel"]["tokens"]["reasoning"]["cached_calls"] == 7


def test_cancelled_job_stops_before_the_next_step(platform: dict[str, Any]) -> None:
    emb: Embedded = platform["emb"]
    engine: ScriptedEngine = platform["engine"]
    job_id = emb.submit(platform["spec"])
    with emb.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        jobs.cancel_job(session, job=job)
    emb.drain()
    assert engine.calls == []
    with emb.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == "cancelled"
        assert job.output == {}


class CrashingEngine(ScriptedEngine):
    """Dies in the middle of every call, as a worker killed mid-chunk would."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.extend(r.prompt for r in requests)
        raise RuntimeError("the worker died here")


def test_an_item_that_kills_its_worker_is_given_up_after_max_attempts(
    platform: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    emb: Embedded = platform["emb"]
    job_id = emb.submit(platform["spec"])  # max_attempts=2, chunks of 4
    first, *rest = [args for _, args in discard_messages(emb)]
    crashing = CrashingEngine()
    for _ in range(2):  # two deliveries of the first chunk die inside the model call
        with pytest.raises(RuntimeError, match="died"):
            captioning.caption_chunk(emb.db, *first, engine=crashing)
    # The third delivery starts nothing: each of its items was started twice already.
    captioning.caption_chunk(emb.db, *first, engine=platform["engine"])
    for args in rest:
        captioning.caption_chunk(emb.db, *args)
    emb.drain()
    with emb.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        records = {str(r.item_id): r for r in session.scalars(select(GenerationRecord))}
    # Every item was settled; the job ends (here without a kept sample: OK1 and OK2 were
    # in the given-up chunk).
    assert job.status == "failed"
    assert job.counters["failed"] == {"pseudo_cot_gave_up": 4, "pseudo_cot_http_500": 1}
    assert job.items_done + job.items_failed == 8
    gave_up = [records[i] for i in first[1]]
    assert {(r.status, r.reject_reason, r.attempts) for r in gave_up} == {
        ("failed", "pseudo_cot_gave_up", 2)
    }
    assert "started 2 times" in (gave_up[0].error or "")
    assert not any(q in p for p in platform["engine"].calls for q in QUESTIONS[:4])


def test_engines_are_built_once_per_process_across_chunks(
    platform: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks, three steps each, two engine specs: two engines, built once each."""
    monkeypatch.undo()  # the real engine_for this time, with a counting factory behind it
    built: list[str] = []

    def build(spec: EngineSpec) -> ScriptedEngine:
        built.append(spec.model)
        return ScriptedEngine()

    monkeypatch.setattr(engines, "make_engine", build)
    engines.close_engines()
    spec = platform["spec"].model_copy(
        update={"reasoner": EngineSpec(engine="transformers", model="scripted-reasoner")}
    )
    try:
        job = platform["emb"].run(spec)
        again = platform["emb"].run(spec)  # a second job in the same process reuses them too
    finally:
        engines.close_engines()
    assert job.status == again.status == "succeeded"
    assert job.chunks_total == 2
    assert sorted(built) == ["scripted", "scripted-reasoner"]
