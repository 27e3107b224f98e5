"""The stack as compose.yaml declares it, run as local processes, driven only over HTTP.

Every application service is started with exactly the command and environment that
compose.yaml gives it (service host names pointed at this machine's PostgreSQL and
Redis, container paths at temporary folders, ports at free ones); the test waits on the
declared healthchecks, then runs a complete ``pipeline`` job on toy data through the
gateway with an API key and downloads what it produced.  A compose.yaml whose command or
variables no longer work fails here.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL
from tests.e2e.compose_stack import (
    Service,
    application_services,
    load_stack,
    rewrite_hosts,
    rewrite_paths,
    start_order,
)
from tests.helpers import free_port, pipeline_toy_files, small_pipeline_spec

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 900


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """A fresh database on the local PostgreSQL: (user, name)."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"vr1_e2e_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.username or "postgres", name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Stack:
    """The compose services as local processes."""

    def __init__(self, services: dict[str, Service], env: dict[str, dict[str, str]], logs: Path):
        self.services, self.env, self.logs = services, env, logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _argv(self, argv: list[str]) -> list[str]:
        return [str(VENV_BIN / argv[0]) if (VENV_BIN / argv[0]).exists() else argv[0], *argv[1:]]

    def run_once(self, name: str) -> None:
        """A one-shot service (migrate): must exit 0."""
        service = self.services[name]
        assert service.command, f"{name} declares no command"
        done = subprocess.run(
            self._argv(service.command), env=self.env[name], capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]

    def start(self, name: str) -> None:
        service = self.services[name]
        assert service.command, f"{name} declares no command"
        log = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            self._argv(service.command),
            env=self.env[name],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, name: str, timeout_s: float = 120) -> None:
        """Run the service's declared healthcheck until it passes."""
        check = self.services[name].healthcheck
        assert check, f"{name} declares no healthcheck"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes[name]
            assert process.poll() is None, f"{name} exited: {self.tail(name)}"
            if subprocess.run(check, env=self.env[name], capture_output=True).returncode == 0:
                return
            time.sleep(1)
        pytest.fail(f"{name} never became healthy: {self.tail(name)}")

    def tail(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _environments(
    services: dict[str, Service], tmp: Path, data: Path, redis_url: str
) -> dict[str, dict[str, str]]:
    hosts = {"postgres": "127.0.0.1", "redis": "127.0.0.1"}
    paths = {"/var/lib/vr1": str(tmp / "vr1"), "/data": str(data)}
    redis_db = redis_url.rsplit("/", 1)[-1]
    base = {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", str(tmp)),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    envs = {}
    for name, service in services.items():
        env = rewrite_paths(rewrite_hosts(service.environment, hosts), paths)
        if "VR1_REDIS_URL" in env:  # this machine's Redis, in the tests' own database
            env["VR1_REDIS_URL"] = env["VR1_REDIS_URL"].rsplit("/", 1)[0] + f"/{redis_db}"
        if "VR1_PORT" in env:
            env["VR1_PORT"] = str(free_port())
        envs[name] = {**base, **env, "VR1_TORCH_THREADS": "1"}
    return envs


@pytest.fixture
def stack(
    database: tuple[str, str], redis_url: str, tmp_path: Path, teachers: dict[str, Path]
) -> Iterator[Stack]:
    user, name = database
    data = tmp_path / "data"
    data.mkdir()
    variables = {"POSTGRES_USER": user, "POSTGRES_PASSWORD": "unused", "POSTGRES_DB": name}
    services = application_services(load_stack(variables=variables))
    assert set(services) >= {"migrate", "gateway", "reward", "captioner", "reasoner", "trainer"}
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(services, _environments(services, tmp_path, data, redis_url), logs)
    try:
        for service in start_order(services):
            if service == "migrate":
                running.run_once(service)
            else:
                running.start(service)
        for service in running.processes:
            running.wait_healthy(service)
        yield running
    finally:
        running.stop()


def _api_key(stack: Stack) -> str:
    env = stack.env["gateway"]
    vr1 = str(VENV_BIN / "vr1")
    subprocess.run([vr1, "admin", "create-team", "e2e"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [vr1, "admin", "create-key", "--team", "e2e"], env=env, check=True, capture_output=True
    )
    return done.stdout.decode().strip().splitlines()[-1]


def _wait(client: httpx.Client, job_id: str, stack: Stack) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        for name, process in stack.processes.items():
            assert process.poll() is None, f"{name} died: {stack.tail(name)}"
        time.sleep(2)
    pytest.fail(f"pipeline {job_id} did not finish; trainer log: {stack.tail('trainer')}")


def test_pipeline_over_http_on_the_declared_stack(stack: Stack, teachers: dict[str, Path]) -> None:
    data = Path(stack.env["gateway"]["VR1_IMPORT_ROOTS"].strip('[]"'))
    pipeline_toy_files(data, teachers)
    gateway = f"http://127.0.0.1:{stack.env['gateway']['VR1_PORT']}"
    reward = f"http://127.0.0.1:{stack.env['reward']['VR1_PORT']}"
    headers = {"Authorization": f"Bearer {_api_key(stack)}"}
    with httpx.Client(base_url=gateway, headers=headers, timeout=60) as client:
        ids = {}
        for name, kind in (("source", "source"), ("rl", "rl"), ("test", "eval")):
            response = client.post(
                "/v1/datasets", json={"name": name, "kind": kind, "path": f"{name}.jsonl"}
            )
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
        spec = small_pipeline_spec(data, ids, teachers, reward_url=reward)
        created = client.post("/v1/jobs", json={"name": "e2e", "spec": spec})
        assert created.status_code == 201, created.text
        job = _wait(client, created.json()["id"], stack)
        assert job["status"] == "succeeded", (job["error"], stack.tail("trainer"))

        children = client.get(f"/v1/jobs?parent_id={job['id']}").json()["items"]
        assert {c["kind"]: c["status"] for c in children} == {
            "coldstart": "succeeded",
            "sft": "succeeded",
            "grpo": "succeeded",
            "eval": "succeeded",
        }
        by_kind = {c["kind"]: c for c in children}
        stages = client.get(f"/v1/jobs/{by_kind['grpo']['id']}/stages").json()
        assert [(s["idx"], s["status"]) for s in stages] == [(0, "succeeded"), (1, "succeeded")]
        metrics = client.get(
            f"/v1/jobs/{by_kind['grpo']['id']}/metrics", params={"name": "completion_len_max"}
        ).json()
        caps = {0: 32, 1: 64}
        assert metrics
        assert all(m["value"] <= caps[m["stage_idx"]] for m in metrics)
        accuracy = by_kind["eval"]["output"]["accuracy"]
        assert set(accuracy) == {"test"}

        artifacts = client.get(f"/v1/jobs/{by_kind['grpo']['id']}/artifacts").json()
        checkpoint = next(a for a in artifacts if a["kind"] == "checkpoint")
        download = client.get(f"/v1/artifacts/{checkpoint['id']}/download")
        assert download.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:") as tar:
            names = tar.getnames()
        assert any(n.endswith("config.json") for n in names)
        assert any(n.endswith(".safetensors") for n in names)

        exports = client.get(f"/v1/jobs/{by_kind['coldstart']['id']}/artifacts").json()
        report = next(a for a in exports if a["kind"] == "report")
        funnel = client.get(f"/v1/artifacts/{report['id']}/download").json()
        assert funnel["items_in"] == 4
        assert funnel["kept"] >= 1
