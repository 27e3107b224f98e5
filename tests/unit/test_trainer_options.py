"""Spec fields that reach the trainer: the DeepSpeed config, the prompt-length limit and the
experiment trackers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from services.trainer.callbacks import run_arguments
from services.trainer.data import PromptRow, grpo_records
from services.trainer.grpo import prompt_length, within_prompt_length
from services.trainer.models import load_policy
from services.trainer.reporting import TRACKER_PACKAGES
from shared.errors import InvalidInput
from shared.fixtures.tiny import build_tiny_vlm
from tests.helpers import write_image


def test_a_deepspeed_config_reaches_the_training_arguments(tmp_path: Path) -> None:
    path = tmp_path / "zero3.json"
    path.write_text('{"zero_optimization": {"stage": 3}, "train_batch_size": "auto"}')
    config = run_arguments(0, 10, str(path))["deepspeed"]
    assert config["train_batch_size"] == "auto"
    # Each stage must end in a plain checkpoint: ZeRO-3 gathers the weights when saving.
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "deepspeed" not in run_arguments(0, 10)
    with pytest.raises(InvalidInput, match="DeepSpeed config"):
        run_arguments(0, 10, str(tmp_path / "missing.json"))


def test_prompts_over_max_prompt_length_are_left_out(tmp_path: Path) -> None:
    policy = load_policy(build_tiny_vlm(tmp_path / "vlm"))
    image = write_image(tmp_path / "red.png", "red", size=56)
    rows = [
        PromptRow("What colour?", "red", (image,)),
        PromptRow("What colour is the shape in this picture, please? " * 8, "red", (image,)),
    ]
    records = grpo_records(rows, vision=True)
    lengths = [prompt_length(r, policy) for r in records]
    short, long = lengths
    assert short < long
    assert within_prompt_length(records, lengths, short) == (records[:1], [short])
    assert within_prompt_length(records, lengths, long) == (records, lengths)
    with pytest.raises(InvalidInput, match="max_prompt_length"):
        within_prompt_length(records, lengths, short - 1)


def test_report_to_reaches_the_training_arguments_with_the_run_name() -> None:
    assert run_arguments(0, 10)["report_to"] == "none"  # the platform's own metrics only
    args = run_arguments(0, 10, report_to=["tensorboard"], run_name="tiny sft 1234")
    assert (args["report_to"], args["run_name"]) == (["tensorboard"], "tiny sft 1234")


def test_a_tracker_whose_package_is_missing_is_refused_by_name() -> None:
    missing = [t for t, p in TRACKER_PACKAGES.items() if importlib.util.find_spec(p) is None]
    if not missing:
        pytest.skip("every tracker package is installed here")
    tracker = missing[0]
    needs = f"report_to {tracker} needs the '{TRACKER_PACKAGES[tracker]}' package"
    with pytest.raises(InvalidInput, match=needs):
        run_arguments(0, 10, report_to=["tensorboard", tracker])
