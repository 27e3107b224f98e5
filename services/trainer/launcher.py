"""Launchers start a training run as its own process and report how it is doing.

Long training never lives inside a queue message: the ``train`` task asks a launcher to
start ``python -m services.trainer.run <job id>`` and returns.  The run writes its own stage state,
metrics and heartbeat; the watcher asks the launcher whether a silent run is still there.
``local`` starts a subprocess (compose; embedded mode waits for it to end);
``kubernetes`` creates a Job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

from shared.errors import InvalidInput

RunPhase = Literal["pending", "running", "succeeded", "failed", "unknown"]


@dataclass(frozen=True)
class LaunchRequest:
    """What to run for one attempt of a training job."""

    job_id: str
    attempt: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0  # per machine
    log_dir: Path | None = None
    machines: int = 1


class LaunchRefused(InvalidInput):
    """This launcher cannot start the run as asked (e.g. several machines on one host)."""

    code = "launch_refused"


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


RENDEZVOUS_PORT = 29500  # where the first machine's main process waits for the others


def _entry(job_id: str) -> list[str]:
    return ["-m", "services.trainer.run", job_id]


def run_command(
    job_id: str,
    *,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    num_machines: int = 1,
) -> list[str]:
    """The command of a training run; several processes go through ``accelerate launch``.

    ``num_processes`` counts the processes of all machines.  A run on several machines
    also needs each machine's rank and the first machine's address: the launcher that
    places the machines adds them (``joining``).
    """
    entry = _entry(job_id)
    if num_processes <= 1 and num_machines <= 1:
        return [sys.executable, *entry]
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:  # its distributed type (DeepSpeed, FSDP, …) decides
        command += ["--config_file", accelerate_config]
    else:  # torchrun-style data parallel; without GPUs the processes use gloo on CPUs
        command += ["--multi_gpu"]
    command += ["--num_processes", str(num_processes), "--num_machines", str(num_machines)]
    return [*command, *entry]


def joining(
    command: list[str], job_id: str, *, machine_rank: str, main_address: str, port: int
) -> list[str]:
    """``command`` (from ``run_command``) as one machine of a multi-machine run runs it:
    its rank among the machines, and where the first machine's main process listens."""
    entry = _entry(job_id)
    if command[-len(entry) :] != entry or "accelerate.commands.launch" not in command:
        raise ValueError("not a run command of several processes: " + " ".join(command))
    node = [
        "--machine_rank", machine_rank,
        "--main_process_ip", main_address,
        "--main_process_port", str(port),
    ]  # fmt: skip
    return [*command[: -len(entry)], *node, *entry]


class LocalLauncher:
    """Runs training as a child process group of this machine.

    In the foreground (embedded mode, which runs one thing at a time) ``launch`` returns
    once the run has ended; otherwise it returns at once.  The run writes to its attempt's
    log file (``<log_dir>/attempt-N.log``), or, with ``terminal``, to this process's own
    output (raw output while debugging).
    """

    name = "local"

    def __init__(self, *, foreground: bool = False, terminal: bool = False) -> None:
        self.foreground = foreground
        self.terminal = terminal
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def launch(self, request: LaunchRequest) -> str:
        if request.machines > 1:
            raise LaunchRefused(
                f"a run on {request.machines} machines needs the kubernetes launcher; "
                "the local launcher starts runs on this machine only",
                job_id=request.job_id,
            )
        with self._output(request) as output:
            process = subprocess.Popen(
                request.command,
                env={**os.environ, **request.env},
                stdout=output,
                stderr=None if output is None else subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches every child
            )
        self._children[process.pid] = process
        if self.foreground:
            process.wait()
        return str(process.pid)

    @contextmanager
    def _output(self, request: LaunchRequest) -> Iterator[IO[bytes] | int | None]:
        """Where the run writes: the terminal, its attempt's log, or nowhere."""
        if self.terminal:
            yield None
        elif request.log_dir is None:
            yield subprocess.DEVNULL
        else:
            request.log_dir.mkdir(parents=True, exist_ok=True)
            with (request.log_dir / f"attempt-{request.attempt}.log").open("ab") as log:
                yield log  # the child keeps its own copy of the file

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
