"""How training runs are launched and how a run of several processes ends: one process
plainly, several through ``accelerate launch`` (gloo on CPUs), and a lost peer is a lost
attempt (relaunched), not a failed job."""

from __future__ import annotations

import sys

import pytest
import torch.distributed

from services.trainer.launcher import run_command
from services.trainer.run import peer_lost


def test_one_process_runs_the_module_plainly() -> None:
    assert run_command("j1") == [sys.executable, "-m", "services.trainer.run", "j1"]


def test_several_processes_go_through_accelerate_launch() -> None:
    command = run_command("j1", num_processes=2)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command  # torchrun-style data parallel (gloo without GPUs)
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[-3:] == ["-m", "services.trainer.run", "j1"]


def test_an_accelerate_config_decides_the_distributed_type() -> None:
    command = run_command("j1", num_processes=4, accelerate_config="/cfg/zero3.yaml")
    assert command[command.index("--config_file") + 1] == "/cfg/zero3.yaml"
    assert "--multi_gpu" not in command


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer"), True),
        (RuntimeError("NCCL error: Connection reset by peer"), True),
        (torch.distributed.DistBackendError("a peer went away"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("bad data"), False),
    ],
)
def test_a_lost_peer_is_told_from_a_failing_job(error: BaseException, lost: bool) -> None:
    assert peer_lost(error) is lost
