"""How training runs are launched, end and resume: one process plainly, several through
``accelerate launch`` (gloo on CPUs), a lost peer is a lost attempt (relaunched), not a
failed job, and a relaunch resumes from the newest complete checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.distributed

from services.trainer.launcher import run_command
from services.trainer.run import peer_lost
from services.trainer.tracking import latest_checkpoint


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


def test_a_checkpoint_cut_off_while_saving_is_passed_over(tmp_path: Path) -> None:
    """An attempt killed mid-save leaves a checkpoint whose trainer state is empty or cut
    off; the relaunch resumes from the newest one that reads back."""
    states = {2: '{"global_step": 2}', 4: "", 5: '{"global_st', 6: None}
    for step, state in states.items():
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_checkpoint(tmp_path / "nothing") is None
