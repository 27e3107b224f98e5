"""What the coldstart integration tests share: worker and server processes, toy datasets
drawn from the stand-in teachers' world, job polling, and the export checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.db.models import GenerationRecord
from shared.db.session import Database
from tests.helpers import served_model

REPO = Path(__file__).resolve().parents[1]
# One torch thread per process: reproducible outputs and no oversubscribed 2-core box.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "PYTHONPATH": str(REPO),
}
TERMINAL = ("succeeded", "failed", "cancelled")


def engine(path: Path, **fields: Any) -> dict[str, Any]:
    """A greedy engine spec for a local stand-in teacher."""
    generation = {"max_new_tokens": 128, "temperature": 0, **fields.pop("generation", {})}
    return {
        "engine": "transformers",
        "model": str(path),
        "device": "cpu",
        "generation": generation,
        **fields,
    }


def toy_subset(toy: Path, folder: Path, n: int, *, split: str = "train") -> Path:
    """The first ``n`` rows of the toy ``split`` with their images, copied into ``folder``."""
    lines = (toy / f"{split}.jsonl").read_text().splitlines()[:n]
    for line in lines:
        image = json.loads(line)["image"]
        (folder / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(toy / image, folder / image)
    path = folder / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_job(
    client: TestClient,
    key: str,
    job_id: str,
    *,
    timeout_s: float,
    alive: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job is terminal; ``alive`` checks the workers."""
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if body["status"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not finished after {timeout_s:.0f} s: {body}")
        if alive is not None:
            alive()
        time.sleep(0.25)


# --- processes --------------------------------------------------------------------------


@dataclass
class Child:
    """A process started in a session of its own, so its whole group can be killed."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def check_alive(self) -> None:
        """Fail with the end of the log if the process died on its own."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and anything it started)."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def kill_when(self, caught: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
        """SIGKILL the group at a moment ``caught()`` holds while the group stands stopped.

        A check followed by a kill races the process: by the kill it may have moved past
        what the check saw. Stopping the group first (SIGSTOP), letting commits in flight
        land, and checking again makes the state seen the state the process dies in.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if caught():
                assert self.process is not None
                os.killpg(self.process.pid, signal.SIGSTOP)
                time.sleep(0.2)
                if caught():
                    self.kill()
                    return
                os.killpg(self.process.pid, signal.SIGCONT)
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what} in {self.name}")

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL what is left after a grace period."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class WorkerPool:
    """Starts ``vr1 worker <role>`` processes against one database, broker and store."""

    database_url: str
    redis_url: str
    artifact_uri: str
    logs: Path
    visibility_timeout_s: int = 8
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, role: str) -> Child:
        n = sum(1 for c in self.children if c.name.startswith(role))
        env = {
            **os.environ,
            **CHILD_ENV,
            **self.env,
            "VR1_DATABASE_URL": self.database_url,
            "VR1_REDIS_URL": self.redis_url,
            "VR1_ARTIFACT_URI": self.artifact_uri,
            "VR1_VISIBILITY_TIMEOUT_S": str(self.visibility_timeout_s),
            "VR1_CONCURRENCY": "1",
            "VR1_WORKER_NAME": f"{role}-{n}@%h",
            "VR1_HOME": str(self.logs / "home"),
        }
        command = [sys.executable, "-m", "entrypoints.cli", "worker", role]
        child = Child(f"{role}-{n}", command, env, self.logs / f"{role}-{n}.log").start()
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    def stop_all(self) -> None:
        for child in self.children:
            child.stop()


@contextmanager
def workers(
    database_url: str, redis_url: str, artifact_uri: str, logs: Path, **fields: Any
) -> Iterator[WorkerPool]:
    """A worker pool whose processes are always stopped at the end."""
    logs.mkdir(parents=True, exist_ok=True)
    pool = WorkerPool(database_url, redis_url, artifact_uri, logs, **fields)
    try:
        yield pool
    finally:
        pool.stop_all()


@contextmanager
def transformers_serve(model: Path, logs: Path, *, timeout_s: float = 120.0) -> Iterator[str]:
    """Base URL of a real ``transformers serve`` on ``model``, one torch thread."""
    with served_model(model, logs / "serve.log", env=CHILD_ENV, timeout_s=timeout_s) as base:
        yield base


# --- export checks ----------------------------------------------------------------------


def check_export(export: Path, gold: dict[str, str]) -> list[dict[str, Any]]:
    """The export is valid LLaMA-Factory data whose every row passes HFRRF; its rows.

    ``gold`` maps source item IDs to gold answers.
    """
    from shared.rewards import InlineVerifier, ScoreItem, Scorer, score

    rows: list[dict[str, Any]] = json.loads((export / "cold.json").read_text())
    assert rows, "the export is empty"
    for row in rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].count("<image>") == len(row["images"]) >= 1
        assert all((export / image).is_file() for image in row["images"])
        content = assistant["content"]
        assert re.fullmatch(r"<think>\n.+\n</think>\n<answer>[^<]+</answer>", content, re.S), (
            content
        )
    info = json.loads((export / "dataset_info.json").read_text())
    (entry,) = info.values()
    assert (entry["file_name"], entry["formatting"]) == ("cold.json", "sharegpt")
    assert entry["columns"] == {"messages": "messages", "images": "images"}
    table = pq.read_table(export / "cold.parquet").to_pylist()
    assert [t["messages"] for t in table] == [r["messages"] for r in rows]
    assert [t["images"] for t in table] == [r["images"] for r in rows]
    sources = [t["source_item_id"] for t in table]
    assert len(set(sources)) == len(sources), "an item was exported twice"
    assert all(t["answer"] == gold[t["source_item_id"]] for t in table)
    items = [
        ScoreItem(completion=r["messages"][1]["content"], answer=gold[s])
        for r, s in zip(rows, sources, strict=True)
    ]
    rewards = [result.reward for result in score("hfrrf", items, scorer=Scorer(InlineVerifier()))]
    assert rewards == [1.0] * len(rows), rewards
    return rows


# --- jobs -------------------------------------------------------------------------------


def register_toy(
    client: TestClient, key: str, toy: Path, data: Path, n: int
) -> tuple[str, dict[str, str]]:
    """Register the first ``n`` toy items (copied under ``data``, an import root) through the
    API; the dataset ID and the gold answer of each item."""
    toy_subset(toy, data / "toy", n)
    body = {"name": "toy", "path": "toy/train.jsonl"}
    created = client.post("/v1/datasets", headers=auth(key), json=body)
    assert created.status_code == 201, created.text
    dataset_id: str = created.json()["id"]
    items = client.get(f"/v1/datasets/{dataset_id}/items?limit={n}", headers=auth(key)).json()
    assert items["total"] == n
    return dataset_id, {item["id"]: item["answer"] for item in items["items"]}


def check_one_record_per_item(db: Database, job_id: str, gold: dict[str, str]) -> None:
    """Each of the job's items has exactly one generation record, and no other item has."""
    with db.session() as session:
        per_item = session.execute(
            select(GenerationRecord.item_id, func.count())
            .where(GenerationRecord.job_id == uuid.UUID(job_id))
            .group_by(GenerationRecord.item_id)
        ).all()
    assert {str(item) for item, _ in per_item} == set(gold)
    assert all(count == 1 for _, count in per_item)


def coldstart_spec(teachers: dict[str, Path], dataset_id: str, chunk_size: int) -> dict[str, Any]:
    """A coldstart spec on the stand-in teachers."""
    return {
        "kind": "coldstart",
        "dataset_id": dataset_id,
        "captioner": engine(teachers["describer"], batch_size=chunk_size),
        "reasoner": engine(teachers["reasoner"], batch_size=chunk_size),
        "chunk_size": chunk_size,
        "output_name": "toy-cold",
    }


def gateway_app(
    database_url: str, redis_url: str, artifact_uri: str, data: Path
) -> tuple[Any, Database, str]:
    """A gateway app on this database and broker (datasets imported from ``data``), and
    an API key of its one team "vision"."""
    from services.gateway.app import create_app
    from services.gateway.settings import GatewaySettings
    from shared import teams

    settings = GatewaySettings(
        database_url=database_url,
        redis_url=redis_url,
        artifact_uri=artifact_uri,
        import_roots=[data],
    )
    app = create_app(settings)
    db: Database = app.state.context.db
    with db.session() as session:
        team = teams.create_team(session, name="vision")
        key = teams.create_key(session, team=team).secret
    return app, db, key
