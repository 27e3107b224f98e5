"""Training jobs through the platform: stage state, metrics, checkpoints, crash and resume.

Runs are real processes (``python -m services.trainer.run``) started by the local launcher,
writing to the
real PostgreSQL; the watcher relaunches a run that was killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from entrypoints.bootstrap import Embedded
from services.trainer import watcher
from services.trainer.k8s_launcher import KubernetesLauncher
from services.trainer.launcher import LaunchRequest, LocalLauncher, RunState
from services.trainer.settings import TrainerSettings
from shared.contracts.specs import SftSpec
from shared.db.models import Artifact, Job, JobEvent, Metric, RolloutSample, Run, Stage
from tests.helpers import (
    FAST_SFT,
    discard_messages,
    free_port,
    two_stage_grpo_spec,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _stages(platform: Embedded, job_id: uuid.UUID) -> list[Stage]:
    with platform.db.session() as session:
        return list(
            session.scalars(select(Stage).where(Stage.job_id == job_id).order_by(Stage.idx))
        )


def _metric(platform: Embedded, job_id: uuid.UUID, name: str) -> list[Metric]:
    with platform.db.session() as session:
        return list(
            session.scalars(
                select(Metric)
                .where(Metric.job_id == job_id, Metric.name == name)
                .order_by(Metric.stage_idx, Metric.step)
            )
        )


def test_sft_job_writes_stage_metrics_and_a_loadable_checkpoint(
    platform: Embedded, toy: dict[str, Any]
) -> None:
    spec = SftSpec(model=str(toy["student"]), dataset_id=toy["cold"], max_steps=6, **FAST_SFT)
    job = platform.run(spec)
    assert job.status == "succeeded", job.error
    (stage,) = _stages(platform, job.id)
    assert (stage.name, stage.status) == ("sft", "succeeded")
    assert stage.checkpoint_uri == job.output["checkpoint_uri"]
    losses = _metric(platform, job.id, "loss")
    assert [m.step for m in losses] == list(range(1, 7))
    assert stage.summary["steps"] == len(losses)  # the plan the trainer announced, kept
    checkpoint = platform.store.local_path(job.output["checkpoint_uri"])
    assert (checkpoint / "config.json").is_file()
    with platform.db.session() as session:
        kinds = list(session.scalars(select(Artifact.kind).where(Artifact.job_id == job.id)))
    assert kinds == ["checkpoint"]


def test_ptst_stages_run_with_their_own_cap_and_group_from_the_previous_stage(
    platform: Embedded, toy: dict[str, Any]
) -> None:
    job = platform.run(two_stage_grpo_spec(toy, str(toy["student"])))
    assert job.status == "succeeded", job.error
    first, second = _stages(platform, job.id)
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert (first.config["max_completion_tokens"], first.config["group_size"]) == (16, 4)
    assert (second.config["max_completion_tokens"], second.config["group_size"]) == (32, 2)
    # Stage 2 started from stage 1's registered checkpoint, and finished after it.
    assert first.checkpoint_uri is not None
    stage1_weights = str(platform.store.local_path(first.checkpoint_uri))
    assert second.summary["initial_weights"] == stage1_weights
    assert first.finished_at is not None
    assert second.started_at is not None
    assert second.started_at >= first.finished_at
    caps = {0: 16, 1: 32}
    lengths = _metric(platform, job.id, "completion_len_max")
    assert {m.stage_idx for m in lengths} == {0, 1}
    assert all(m.value <= caps[m.stage_idx or 0] for m in lengths)
    completions = {(m.stage_idx, m.value) for m in _metric(platform, job.id, "completions")}
    assert completions == {(0, 8.0), (1, 8.0)}  # 2 prompts x 4, then 4 prompts x 2
    for name in (
        "reward_mean",
        "accuracy",
        "format_rate",
        "truncated_frac",
        "consistency",
        "loss",
        "step_time_s",
        "completion_len_mean",
    ):
        assert len(_metric(platform, job.id, name)) == 8, name
    assert job.output["checkpoint_uri"] == second.checkpoint_uri
    assert [s["steps"] for s in job.output["stages"]] == [4.0, 4.0]


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _ranks_of(launcher_pid: int) -> list[int]:
    """The training processes under ``launcher_pid`` (``accelerate launch`` starts torchrun's
    agent, which starts one process per rank): the lowest ones running the training run."""
    listing = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    runs: set[int] = set()
    for line in listing.splitlines():
        pid_text, ppid_text, args = line.split(maxsplit=2)
        children.setdefault(int(ppid_text), []).append(int(pid_text))
        if "services.trainer.run" in args:
            runs.add(int(pid_text))
    ranks: list[int] = []
    todo = [launcher_pid]
    while todo:
        pid = todo.pop()
        below = [child for child in children.get(pid, []) if child in runs]
        todo.extend(below)
        if not below and pid != launcher_pid:
            ranks.append(pid)
    return sorted(ranks)


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two processes, one killed"])
def test_killed_run_is_relaunched_and_resumes_stage_two(
    platform: Embedded, toy: dict[str, Any], processes: int
) -> None:
    settings = TrainerSettings(
        home=platform.settings.home,
        database_url=platform.settings.resolved_database_url,
        artifact_uri=platform.settings.resolved_artifact_uri,
        checkpoint_every=2,
        heartbeat_interval_s=1.0,
        stale_after_s=4.0,
        torch_threads=1,
    )
    job_id = platform.submit(
        two_stage_grpo_spec(toy, str(toy["student"]), steps=8, processes=processes)
    )
    discard_messages(platform)  # launched below by the watcher's launcher instead
    launcher = LocalLauncher()
    handle = watcher.launch(platform.db, launcher, settings, str(job_id))
    assert handle is not None
    stage2_dir = platform.store.local_path(platform.store.uri_for(f"runs/{job_id}/stage-1"))
    _wait_for(
        lambda: any(stage2_dir.glob("checkpoint-*/trainer_state.json")), 600, "a stage 2 checkpoint"
    )
    first_before = _stages(platform, job_id)[0]
    stage1_metrics = len(_metric(platform, job_id, "loss"))
    if processes == 1:
        os.killpg(int(handle), signal.SIGKILL)
    else:  # one rank dies; its launcher must take the whole group down for a relaunch
        ranks = _ranks_of(int(handle))
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGKILL)

    _wait_for(
        lambda: watcher.watch_once(platform.db, launcher, settings) != [],
        60,
        "the watcher to relaunch the run",
    )
    _wait_for(lambda: _stages(platform, job_id)[1].status == "succeeded", 600, "stage 2")
    _wait_for(
        lambda: launcher.status(_last_handle(platform, job_id)).phase != "running",
        60,
        "the run to exit",
    )
    with platform.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == "succeeded", job.error
        runs = session.scalar(select(func.count()).where(Run.job_id == job_id))
    assert runs == 2
    first, second = _stages(platform, job_id)
    # Stage 1 was not repeated: same finish time and checkpoint, no new stage-1 metrics.
    assert (first.finished_at, first.checkpoint_uri) == (
        first_before.finished_at,
        first_before.checkpoint_uri,
    )
    assert len([m for m in _metric(platform, job_id, "loss") if m.stage_idx == 0]) == 8
    assert stage1_metrics >= 8
    # Stage 2 resumed from its newest checkpoint, and its steps are recorded once each.
    assert second.resume_checkpoint is not None
    assert Path(second.resume_checkpoint).parent == stage2_dir
    steps = [m.step for m in _metric(platform, job_id, "loss") if m.stage_idx == 1]
    assert steps == list(range(1, 9))
    # The job's log tells of the relaunch; the redone steps' samples are kept once each.
    with platform.db.session() as session:
        log = list(
            session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )
        query = select(RolloutSample.stage_idx, RolloutSample.step)
        rows = session.execute(query.where(RolloutSample.job_id == job_id))
        samples = sorted((stage, step) for stage, step in rows)
    (relaunched,) = [e for e in log if e.type == "relaunched"]
    assert relaunched.data["attempt"] == 2
    assert "attempt 1" in relaunched.data["reason"]
    assert [e.data["attempt"] for e in log if e.type == "started"] == [1, 2]
    resumed = [e for e in log if e.type == "stage.started" and e.stage_idx == 1][-1]
    assert f"checkpoint-{resumed.data['resumed_from_step']}" == Path(second.resume_checkpoint).name
    # 2 prompts (of 4 completions) per stage-1 step, 4 (of 2) per stage-2 step: one sample each.
    assert samples == sorted([(0, n) for n in range(1, 9)] * 2 + [(1, n) for n in range(1, 9)] * 4)


def _last_handle(platform: Embedded, job_id: uuid.UUID) -> str:
    with platform.db.session() as session:
        run = session.scalars(
            select(Run).where(Run.job_id == job_id).order_by(Run.attempt.desc())
        ).first()
        assert run is not None
        return run.handle


@dataclass
class _Recorded:
    """A launcher that keeps the request instead of starting it (started by hand below)."""

    name: str = "kubernetes"
    requests: list[LaunchRequest] = field(default_factory=list)

    def launch(self, request: LaunchRequest) -> str:
        self.requests.append(request)
        return f"vr1/{request.job_id}"

    def status(self, handle: str) -> RunState:
        return RunState("running")

    def stop(self, handle: str) -> None:
        return None


def test_the_pods_of_a_two_machine_run_train_one_job_with_one_record(
    platform: Embedded, toy: dict[str, Any], tmp_path: Path
) -> None:
    """Both pods of the Indexed Job that the Kubernetes launcher renders, run as Kubernetes
    runs them (``$(VR1_MACHINE_RANK)`` set from the pod's index), here as two "machines"
    on this host: the first pod's DNS name, which the headless Service resolves in the
    cluster, is this host's loopback."""
    settings = TrainerSettings(
        home=platform.settings.home,
        database_url=platform.settings.resolved_database_url,
        artifact_uri=platform.settings.resolved_artifact_uri,
        torch_threads=1,
    )
    distributed = {"num_processes": 2, "num_machines": 2}
    spec = SftSpec(
        model=str(toy["student"]),
        dataset_id=toy["cold"],
        max_steps=4,
        distributed=distributed,
        **{**FAST_SFT, "per_device_batch_size": 2},
    )
    job_id = platform.submit(spec)
    discard_messages(platform)
    recorded = _Recorded()
    assert watcher.launch(platform.db, recorded, settings, str(job_id)) is not None
    (request,) = recorded.requests
    launcher = KubernetesLauncher(
        "vr1", ROOT / "k8s/base/job-template.yaml", api=object(), rendezvous_port=free_port()
    )
    job = launcher.render(request)
    name = job["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["spec"]["completions"] == 2
    pods = []
    for index in range(2):
        command = [
            re.sub(r"\$\(VR1_MACHINE_RANK\)", str(index), part).replace(
                f"{name}-0.{name}.vr1.svc", "127.0.0.1"
            )
            for part in container["command"]
        ]
        values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        # request.env holds what the pod takes from the platform's Secret and ConfigMap.
        env = {**os.environ, **request.env, **values}
        log = (tmp_path / f"machine-{index}.log").open("wb")
        pods.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [pod.wait(timeout=600) for pod in pods]
    logs = [(tmp_path / f"machine-{i}.log").read_text()[-3000:] for i in range(2)]
    assert codes == [0, 0], logs
    with platform.db.session() as session:
        finished = session.get(Job, job_id)
        assert finished is not None
        assert finished.status == "succeeded", finished.error
    assert [m.step for m in _metric(platform, job_id, "loss")] == [1, 2, 3, 4]  # written once
    (stage,) = _stages(platform, job_id)
    assert stage.status == "succeeded"
    checkpoint = platform.store.local_path(finished.output["checkpoint_uri"])
    assert (checkpoint / "config.json").is_file()


def test_a_two_machine_run_without_kubernetes_fails_with_the_reason(
    platform: Embedded, toy: dict[str, Any]
) -> None:
    spec = SftSpec(
        model=str(toy["student"]),
        dataset_id=toy["cold"],
        max_steps=4,
        distributed={"num_processes": 2, "num_machines": 2},
        **FAST_SFT,
    )
    job = platform.run(spec)
    assert job.status == "failed"
    assert "needs the kubernetes launcher" in (job.error or "")
    with platform.db.session() as session:
        (run,) = session.scalars(select(Run).where(Run.job_id == job.id))
    assert (run.status, run.handle) == ("ended", "")
