"""Launchers start a training run as its own process and report how it is doing.

Long training never lives inside a queue message: the ``train`` task asks a launcher to
start ``vr1 train-run <job id>`` and returns.  The run writes its own stage state,
metrics and heartbeat; the watcher asks the launcher whether a silent run is still there.
``local`` starts a subprocess (embedded mode, compose); ``kubernetes`` creates a Job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

RunPhase = Literal["pending", "running", "succeeded", "failed", "unknown"]


@dataclass(frozen=True)
class LaunchRequest:
    """What to run for one attempt of a training job."""

    job_id: str
    attempt: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0
    log_dir: Path | None = None


@dataclass(frozen=True)
class RunState:
    phase: RunPhase
    exit_code: int | None = None
    message: str = ""


class Launcher(Protocol):
    name: str

    def launch(self, request: LaunchRequest) -> str:
        """Start the run; returns a handle to ask about it later."""
        ...

    def status(self, handle: str) -> RunState:
        """Where the run is."""
        ...

    def stop(self, handle: str) -> None:
        """Stop the run (and everything it started)."""
        ...


def run_command(
    job_id: str,
    *,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    num_machines: int = 1,
) -> list[str]:
    """The command of a training run; several processes go through ``accelerate launch``."""
    entry = ["-m", "shared.cli", "train-run", job_id]
    if num_processes <= 1 and num_machines <= 1:
        return [sys.executable, *entry]
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        command += ["--config_file", accelerate_config]
    command += ["--num_processes", str(num_processes), "--num_machines", str(num_machines)]
    return [*command, *entry]


class LocalLauncher:
    """Runs training as a child process group of this machine."""

    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def launch(self, request: LaunchRequest) -> str:
        log = subprocess.DEVNULL
        if request.log_dir is not None:
            request.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = request.log_dir / f"attempt-{request.attempt}.log"
            log = log_path.open("ab")  # type: ignore[assignment]
        process = subprocess.Popen(
            request.command,
            env={**os.environ, **request.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches every child
        )
        self._children[process.pid] = process
        return str(process.pid)

    def status(self, handle: str) -> RunState:
        pid = int(handle)
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return RunState("running")
            return RunState("succeeded" if code == 0 else "failed", code)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return RunState("unknown", message="process is gone")
        except PermissionError:
            return RunState("running")
        return RunState("running")

    def stop(self, handle: str) -> None:
        pid = int(handle)
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        child = self._children.get(pid)
        if child is not None:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
