"""The Python client and the ``vr1 datasets|jobs|artifacts`` commands against a real
gateway process on PostgreSQL, whose jobs are run by the embedded relay (the services'
own handlers; training runs as its own process): an upload of a Hugging Face Parquet
file, a two-stage GRPO job followed with ``--watch`` to its end, a failing job, a
download checked against its checksum, and clear one-line errors for a wrong key, an
unknown job and a wrong URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from entrypoints.bootstrap import embedded
from shared import teams
from shared.client import ApiNotFound, ApiUnauthorized, Client
from shared.db.models import Artifact
from shared.db.session import Database
from shared.errors import NotFound
from shared.fixtures.tiny import build_tiny_vlm
from shared.fixtures.toy import generate_toy_dataset, read_rows, write_hf_parquet
from shared.settings import BaseVR1Settings
from shared.storage import LocalStore, open_store, path_from_uri, sha256_file
from tests.helpers import REPO, free_port, served_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Stack:
    base: str
    key: str
    settings: BaseVR1Settings
    folder: Path
    relay_errors: list[BaseException]

    def vr1(self, *args: str, key: str | None = None, url: str | None = None) -> Any:
        """The real ``vr1`` command in its own process, configured by the environment."""
        env = {
            **os.environ,
            **CHILD_ENV,
            "PYTHONPATH": str(REPO),
            "VR1_API_URL": url or self.base,
            "VR1_API_KEY": key or self.key,
        }
        return subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", *args],
            env=env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def client(self, key: str | None = None) -> Client:
        return Client(self.base, key or self.key)


@pytest.fixture(scope="module")
def stack(pg_module: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``vr1 serve gateway`` (no broker: submitted work waits in the outbox) and the
    embedded relay in a thread, handing that work to the services' handlers."""
    folder = tmp_path_factory.mktemp("remote")
    settings = BaseVR1Settings(
        home=folder / "home",
        database_url=pg_module,
        artifact_uri=(folder / "artifacts").as_uri(),
    )
    platform = embedded(settings)
    with platform.db.session() as session:
        key = teams.create_key(session, team=teams.create_team(session, name="remote")).secret
    port = free_port()
    env = {
        **os.environ,
        "VR1_DATABASE_URL": pg_module,
        "VR1_ARTIFACT_URI": settings.resolved_artifact_uri,
        "VR1_REDIS_URL": "",
        "VR1_PORT": str(port),
        "VR1_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    stop = threading.Event()
    errors: list[BaseException] = []

    def relay() -> None:
        while not stop.is_set():
            try:
                if not platform.drain():
                    stop.wait(0.3)
            except Exception as exc:  # reported by the tests, not lost in the thread
                errors.append(exc)
                return

    thread = threading.Thread(target=relay, daemon=True)
    with served_gateway(env, folder / "gateway.log") as (base, _server):
        thread.start()
        try:
            yield Stack(base, key, settings, folder, errors)
        finally:
            stop.set()
            thread.join(timeout=120)


@pytest.fixture(scope="module")
def uploaded(stack: Stack) -> dict[str, Any]:
    """``vr1 datasets upload`` of a Hugging Face Parquet file (images embedded as bytes)."""
    info = generate_toy_dataset(
        stack.folder / "toy", seed=0, n_train=8, n_test=0, tasks=["shape_colour"]
    )
    rows = read_rows(info.train_path)
    parquet = write_hf_parquet(rows, info.root, stack.folder / "rl.parquet")
    done = stack.vr1(
        "datasets", "upload", str(parquet), "--name", "rl", "--kind", "rl",
        "--image-column", "images", "--question-column", "problem",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    dataset_id = done.stdout.strip().splitlines()[-1]
    assert "rl: 8 items, 0 rows skipped" in done.stderr
    return {"id": dataset_id, "rows": rows, "root": info.root}


def test_an_uploaded_parquet_file_is_registered_with_its_images(
    stack: Stack, uploaded: dict[str, Any]
) -> None:
    with stack.client() as client:
        dataset = client.datasets.get(uploaded["id"])
        items = list(client.datasets.iter_items(uploaded["id"], page_size=3))  # 3 pages
    assert (dataset.name, dataset.kind, dataset.format, dataset.size) == ("rl", "rl", "parquet", 8)
    rows = uploaded["rows"]
    assert [item.idx for item in items] == list(range(8))
    assert [item.answer for item in items] == [str(row["answer"]) for row in rows]
    assert [item.question for item in items] == [f"<image>{row['question']}" for row in rows]
    for item, row in zip(items, rows, strict=True):  # each image comes back byte for byte
        assert (
            path_from_uri(item.images[0]).read_bytes()
            == (uploaded["root"] / row["image"]).read_bytes()
        )
    listed = stack.vr1("datasets", "list")
    assert listed.returncode == 0, listed.stderr
    assert uploaded["id"] in listed.stdout


def test_a_watched_grpo_job_shows_its_stages_and_succeeds(
    stack: Stack, uploaded: dict[str, Any]
) -> None:
    student = build_tiny_vlm(stack.folder / "student", seed=0)
    spec = {
        "kind": "grpo",
        "model": str(student),
        "dataset_id": uploaded["id"],
        "stages": [
            {"max_completion_tokens": 16, "group_size": 4, "steps": 2, "prompts_per_step": 2},
            {"max_completion_tokens": 32, "group_size": 2, "steps": 2, "prompts_per_step": 4},
        ],
        "learning_rate": 1e-4,
        "beta": 0.0,
    }
    (stack.folder / "grpo.json").write_text(json.dumps(spec))
    done = stack.vr1("jobs", "submit", "grpo.json", "--name", "tiny-grpo", "--watch")
    assert not stack.relay_errors
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.splitlines()[0]
    lines = done.stdout.splitlines()
    # Plain progress lines (the output is not a terminal): stage by stage, steps of 4.
    assert any("stage 1/2 · 16×4" in line for line in lines), done.stdout
    assert any("stage 2/2 · 32×2: 4/4" in line for line in lines), done.stdout
    assert f"job {job_id} succeeded" in done.stdout
    assert "Traceback" not in done.stderr

    shown = stack.vr1("jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id} (tiny-grpo): grpo, succeeded" in shown.stdout
    assert "stage 2/2 · 32×2: 4/4" in shown.stdout
    metrics = stack.vr1("jobs", "metrics", job_id, "--name", "loss", "--stage", "2")
    assert metrics.returncode == 0, metrics.stderr
    assert "loss" in metrics.stdout
    listed = stack.vr1("jobs", "list", "--kind", "grpo", "--status", "succeeded")
    assert job_id in listed.stdout

    # A checkpoint (a folder) downloads as a tar and unpacks to the files that were stored.
    with stack.client() as client:
        checkpoints = [a for a in client.jobs.artifacts(job_id) if a.kind == "checkpoint"]
    assert len(checkpoints) == 2
    last = checkpoints[-1]
    out = stack.folder / "downloads"
    out.mkdir()
    got = stack.vr1("artifacts", "download", str(last.id), "--out", str(out), "--extract")
    assert got.returncode == 0, got.stderr
    folder = Path(got.stdout.strip())
    assert (folder / "config.json").is_file()
    again = LocalStore(stack.folder / "check").put_tree(folder, "checkpoint")
    assert again.checksum == last.checksum


def test_a_failing_job_exits_1_with_its_error(stack: Stack, uploaded: dict[str, Any]) -> None:
    spec = {
        "kind": "eval",
        "model": str(stack.folder / "no-such-model"),
        "dataset_ids": [uploaded["id"]],
    }
    (stack.folder / "eval.json").write_text(json.dumps(spec))
    done = stack.vr1("jobs", "submit", "eval.json", "--watch")
    assert done.returncode == 1, done.stdout + done.stderr
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id} failed: " in done.stderr
    assert "Traceback" not in done.stderr
    with stack.client() as client:
        assert client.jobs.get(job_id).status == "failed"


def test_a_file_artifact_downloads_with_its_checksum(stack: Stack, tmp_path: Path) -> None:
    store = open_store(stack.settings.resolved_artifact_uri)
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(3 << 20))
    stored = store.put_file(source, "reports/report.bin")
    db = Database(stack.settings.database_url)
    with db.session() as session:
        team = teams.get_team(session, name="remote")
        artifact = Artifact(
            team_id=team.id,
            kind="report",
            name="report.bin",
            uri=stored.uri,
            size_bytes=stored.size_bytes,
            checksum=stored.checksum,
        )
        session.add(artifact)
        session.flush()
        artifact_id = str(artifact.id)
    db.dispose()
    target = tmp_path / "copy.bin"
    got = stack.vr1("artifacts", "download", artifact_id, "--out", str(target))
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()) == target
    assert sha256_file(target) == stored.checksum


def test_the_client_pages_types_errors_and_replays_a_submission(
    stack: Stack, uploaded: dict[str, Any]
) -> None:
    spec = {"kind": "sft", "model": "m", "dataset_id": uploaded["id"], "max_steps": 1}
    with stack.client() as client:
        with pytest.raises(ApiNotFound) as missing:
            client.jobs.get(uuid.uuid4())
        assert isinstance(missing.value, NotFound)
        assert missing.value.status_code == 404
        assert "not found" in missing.value.message
        first = client.jobs.submit(spec, idempotency_key="once")
        again = client.jobs.submit(spec, idempotency_key="once")
        assert again.id == first.id
        client.jobs.cancel(first.id)
        assert client.jobs.get(first.id).status == "cancelled"
    with Client(stack.base, "vr1_wrong_key") as client, pytest.raises(ApiUnauthorized):
        client.jobs.list()


def test_clear_messages_for_a_wrong_key_an_unknown_job_and_a_wrong_url(stack: Stack) -> None:
    wrong_key = stack.vr1("jobs", "list", key="vr1_abcdefgh_wrong")
    assert wrong_key.returncode == 2
    assert wrong_key.stderr.startswith("error: the gateway refused the API key")
    unknown = stack.vr1("jobs", "show", str(uuid.uuid4()))
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: job ")
    assert "not found" in unknown.stderr
    wrong_url = stack.vr1("jobs", "list", url=f"http://127.0.0.1:{free_port()}")
    assert wrong_url.returncode == 2
    assert wrong_url.stderr.startswith("error: cannot reach the API at")
    for done in (wrong_key, unknown, wrong_url):
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
