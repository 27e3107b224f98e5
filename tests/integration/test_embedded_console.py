"""A tiny job through ``vr1 run`` on an embedded home, as a person runs it: the screen shows
its phase and figures while library output goes to log files; its TensorBoard events are
kept as an artifact; and the command the demo prints serves its jobs in the dashboard.

Embedded mode is the subject here, so the database is the home's own SQLite file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from entrypoints.bootstrap import Embedded, embedded
from entrypoints.demo.dashboard import dashboard
from services.trainer.reporting import TRACKER_PACKAGES
from shared import progress
from shared.contracts.api import ProgressOut
from shared.contracts.specs import EvalSpec
from shared.db.models import Artifact, Dataset, Job, Metric
from shared.settings import BaseVR1Settings
from tests.helpers import FAST_SFT, discard_messages, free_port, training_toy, two_stage_grpo_spec

pytestmark = pytest.mark.integration
VR1 = str(Path(sys.executable).with_name("vr1"))


@dataclass
class Ran:
    """One ``vr1 run`` of a spec in the embedded home."""

    home: Path
    result: subprocess.CompletedProcess[str]

    @property
    def job(self) -> dict[str, object]:
        output: dict[str, object] = json.loads(self.result.stdout)
        return output

    @property
    def job_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.job["job_id"]))

    @property
    def screen(self) -> list[str]:
        return self.result.stderr.splitlines()


def _vr1_run(home: Path, spec: dict[str, object], name: str, *, verbose: bool = False) -> Ran:
    path = home.parent / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "VR1_HOME": str(home), "VR1_VERBOSE": "1" if verbose else "0"}
    result = subprocess.run(
        [VR1, "run", str(path), "--name", name],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,
        timeout=600,
    )
    return Ran(home, result)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded") / "home"


@pytest.fixture(scope="module")
def platform(home: Path) -> Embedded:
    return embedded(BaseVR1Settings(home=home))


@pytest.fixture(scope="module")
def toy(platform: Embedded, home: Path) -> dict[str, Any]:
    return training_toy(platform, home.parent)


@pytest.fixture(scope="module")
def sft_spec(toy: dict[str, Any]) -> dict[str, object]:
    return {
        "kind": "sft",
        "model": str(toy["student"]),
        "dataset_id": toy["cold"],
        "max_steps": 3,
        **FAST_SFT,
        "report_to": ["tensorboard"],
    }


@pytest.fixture(scope="module")
def tiny_sft(home: Path, sft_spec: dict[str, object]) -> Ran:
    ran = _vr1_run(home, sft_spec, "tiny-sft")
    assert ran.result.returncode == 0, ran.result.stderr[-3000:]
    return ran


@pytest.mark.timeout(600)
def test_the_screen_shows_the_phase_and_its_figures_not_library_output(
    tiny_sft: Ran, platform: Embedded
) -> None:
    assert tiny_sft.job["status"] == "succeeded"
    job_id = tiny_sft.job_id
    with platform.db.session() as session:
        losses = session.scalars(
            select(Metric.value)
            .where(Metric.job_id == job_id, Metric.name == "loss")
            .order_by(Metric.step.desc())
        ).all()
    first, *progress, summary, log_line = tiny_sft.screen
    assert first == "▶ tiny-sft"
    assert all(line.startswith("  tiny-sft: ") for line in progress)  # a slow machine's
    assert summary.startswith(f"✓ tiny-sft — {len(losses)} steps, final loss {losses[0]:.3g} — ")
    assert log_line == "library output: home/logs/run.log"
    command_log = (tiny_sft.home / "logs" / "run.log").read_text()
    assert f"launched job {job_id}" in command_log
    # The training process wrote to its attempt's log, not to the terminal.
    run_log = platform.store.local_path(platform.store.uri_for(f"runs/{job_id}/logs"))
    assert "Loading weights" in (run_log / "attempt-1.log").read_text()


def test_progress_of_waiting_jobs_is_read_from_their_spec_and_rows(
    platform: Embedded, toy: dict[str, Any]
) -> None:
    evaluation = EvalSpec(model=str(toy["student"]), dataset_ids=[toy["rl"]])
    ptst = two_stage_grpo_spec(toy, str(toy["student"]), steps=4)
    ids = [platform.submit(evaluation), platform.submit(ptst)]
    discard_messages(platform)  # looked at, never run
    with platform.db.session() as session:
        rl_rows = session.get(Dataset, uuid.UUID(toy["rl"]))
        jobs = [session.get(Job, job_id) for job_id in ids]
        snaps = [progress.job_progress(session, job) for job in jobs if job is not None]
        left = [progress.figures(session, job) for job in jobs if job is not None]
    assert rl_rows is not None
    assert snaps == [
        ProgressOut(done=0, total=rl_rows.size, unit="items"),
        ProgressOut(done=0, total=8, unit="steps", stage="stage 1/2 · 16×4"),
    ]
    assert left == ["left queued", "left queued"]


@pytest.mark.timeout(600)
def test_verbose_shows_the_training_run_raw(home: Path, sft_spec: dict[str, object]) -> None:
    ran = _vr1_run(home, {**sft_spec, "max_steps": 1}, "tiny-verbose", verbose=True)
    assert ran.result.returncode == 0, ran.result.stderr[-3000:]
    assert "Loading weights" in ran.result.stderr  # the run's own output, on the screen
    assert "✓ tiny-verbose — 1 steps" in ran.result.stderr
    assert not (home / "artifacts" / "runs" / str(ran.job_id) / "logs").exists()


@pytest.mark.timeout(600)
def test_tensorboard_events_hold_every_training_step_and_are_kept_as_an_artifact(
    tiny_sft: Ran, platform: Embedded
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job_id = tiny_sft.job_id
    with platform.db.session() as session:
        losses = session.execute(
            select(Metric.step, Metric.value)
            .where(Metric.job_id == job_id, Metric.name == "loss")
            .order_by(Metric.step)
        ).all()
        (logs,) = session.scalars(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "logs")
        ).all()
    stored = platform.store.local_path(logs.uri)
    (events,) = {path.parent for path in stored.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    scalars = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert [step for step, _ in scalars] == [step for step, _ in losses] == [1, 2, 3]
    assert [value for _, value in scalars] == pytest.approx([value for _, value in losses])
    assert logs.meta == {"stage": 0}


@pytest.mark.timeout(600)
def test_a_tracker_without_its_package_fails_the_job_with_what_to_install(
    home: Path, sft_spec: dict[str, object]
) -> None:
    missing = [t for t, p in TRACKER_PACKAGES.items() if importlib.util.find_spec(p) is None]
    if not missing:
        pytest.skip("every tracker package is installed here")
    ran = _vr1_run(home, {**sft_spec, "report_to": [missing[0]]}, "no-tracker")
    assert ran.result.returncode == 1
    needs = f"report_to {missing[0]} needs the '{TRACKER_PACKAGES[missing[0]]}' package"
    assert needs in str(ran.job["error"])
    assert "Traceback" not in str(ran.job["error"])
    failed = ran.screen[-2]
    assert failed.startswith("✗ no-tracker — failed: ")
    assert needs in failed
    assert f"(full log: home/artifacts/runs/{ran.job_id}/logs/attempt-1.log)" in failed


def _healthy(base: str, server: subprocess.Popen[bytes], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


@pytest.fixture
def gateway(platform: Embedded, tiny_sft: Ran) -> Iterator[tuple[str, str, str]]:
    """The gateway started by exactly the command the demo prints; (its URL root, key,
    the command it prints for the worker)."""
    pointer = dashboard(platform, port=free_port())
    assert pointer.url.endswith("/ui/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VR1_")}
    # Typed where the demo ran (the paths it prints are relative to there).
    server = subprocess.Popen(
        ["bash", "-c", pointer.command], cwd=Path.cwd(), env=env, start_new_session=True
    )
    base = pointer.url.removesuffix("/ui/")
    try:
        assert _healthy(base, server), f"the gateway did not come up with: {pointer.command}"
        yield base, pointer.api_key, pointer.worker
    finally:
        _stop(server)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.timeout(600)
def test_the_printed_commands_serve_the_embedded_jobs_and_run_new_ones(
    gateway: tuple[str, str, str], tiny_sft: Ran, toy: dict[str, Any], home: Path
) -> None:
    base, key, worker_command = gateway
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{base}/v1/jobs", timeout=10).status_code == 401
    listed = httpx.get(f"{base}/v1/jobs", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    jobs = {job["id"]: job for job in listed.json()["items"]}
    assert jobs[str(tiny_sft.job_id)]["status"] == "succeeded"

    # A job submitted to that gateway and followed waits, and says what is missing; once
    # the printed worker command runs, it runs, and the follower ends with its outcome.
    spec = {"kind": "eval", "model": str(toy["student"]), "dataset_ids": [toy["rl"]]}
    spec |= {"limit": 4, "max_new_tokens": 8, "max_tries": 1}
    spec_path = home.parent / "remote-eval.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VR1_")}
    remote = {**env, "VR1_API_URL": base, "VR1_API_KEY": key, "VR1_QUEUED_HINT_S": "1"}
    followed = home.parent / "watch.log"
    with followed.open("w") as out:
        watcher = subprocess.Popen(
            [VR1, "jobs", "submit", str(spec_path), "--watch"],
            env=remote,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while "vr1 worker embedded" not in followed.read_text():
            assert time.monotonic() < deadline, followed.read_text()
            assert watcher.poll() is None, followed.read_text()
            time.sleep(0.3)
        assert "still queued after" in followed.read_text()
        worker = subprocess.Popen(
            ["bash", "-c", worker_command], cwd=Path.cwd(), env=env, start_new_session=True
        )
        assert watcher.wait(timeout=300) == 0, followed.read_text()
    finally:
        for process in (watcher, worker):
            if process is not None:
                _stop(process)
    job_id = followed.read_text().splitlines()[0]
    assert f"job {job_id} succeeded" in followed.read_text()
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
    assert job["progress"]["done"] == job["progress"]["total"] == 4
    assert worker is not None
    assert worker.returncode == 0  # SIGTERM: it stopped cleanly between messages
