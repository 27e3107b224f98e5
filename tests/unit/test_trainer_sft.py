"""Cold-start SFT setup: the loss covers the assistant turn only, and the vision tower and
projector are frozen. Checked on the batches TRL's SFTTrainer really builds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from services.trainer.sft import accumulation_steps, build_sft_trainer, run_sft
from shared.contracts.specs import SftOptions
from shared.errors import InvalidInput
from shared.fixtures.tiny import build_tiny_text_lm, build_tiny_vlm
from tests.helpers import write_image

ANSWER = "<think>The shape is red.</think><answer>red</answer>"
OPTIONS = SftOptions(
    learning_rate=1e-3, max_steps=2, global_batch_size=2, per_device_batch_size=2, max_length=256
)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest and reproducibly on one thread (2 threads are ~7x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def _vision_set(root: Path) -> Path:
    write_image(root / "images" / "a.png", "red", size=56)
    write_image(root / "images" / "b.png", "blue", size=56)
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image>What colour is the shape?"},
                {"role": "assistant", "content": ANSWER.replace("red", colour)},
            ],
            "images": [f"images/{name}.png"],
        }
        for name, colour in (("a", "red"), ("b", "blue"))
    ]
    return _write(root / "cold.json", rows)


def _trained_text(batch: dict[str, torch.Tensor], tokenizer: Any, row: int) -> str:
    labels = batch["labels"][row]
    return str(tokenizer.decode(batch["input_ids"][row][labels != -100]))


def test_vlm_loss_covers_only_the_assistant_turn(tmp_path: Path) -> None:
    model = build_tiny_vlm(tmp_path / "vlm")
    trainer, policy = build_sft_trainer(model, _vision_set(tmp_path), tmp_path / "out", OPTIONS)
    batch = next(iter(trainer.get_train_dataloader()))
    image_token = policy.processing_class.image_token_id
    assert (batch["input_ids"] == image_token).any()  # the image reached the batch
    assert (batch["labels"][batch["input_ids"] == image_token] == -100).all()
    trained = sorted(_trained_text(batch, policy.tokenizer, i) for i in range(2))
    expected = sorted(ANSWER.replace("red", c) + "<|im_end|>\n" for c in ("red", "blue"))
    assert trained == expected  # no system, user or question token carries loss


def test_vision_tower_and_projector_are_frozen(tmp_path: Path) -> None:
    model = build_tiny_vlm(tmp_path / "vlm")
    trainer, _ = build_sft_trainer(model, _vision_set(tmp_path), tmp_path / "out", OPTIONS)
    params = dict(trainer.model.named_parameters())
    vision = {n: p for n, p in params.items() if "visual." in n}
    assert any("merger" in n for n in vision)  # the projector is part of the frozen set
    assert vision
    assert not any(p.requires_grad for p in vision.values())
    assert all(p.requires_grad for n, p in params.items() if n not in vision)


def test_text_only_model_trains_on_the_assistant_turn(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Description: a red circle. Question: colour?"},
                {"role": "assistant", "content": ANSWER},
            ]
        }
    ] * 2
    train = _write(tmp_path / "text.json", rows)
    model = build_tiny_text_lm(tmp_path / "lm")
    trainer, policy = build_sft_trainer(model, train, tmp_path / "out", OPTIONS)
    batch = next(iter(trainer.get_train_dataloader()))
    assert _trained_text(batch, policy.tokenizer, 0) == ANSWER + "<|im_end|>\n"

    steps: list[int] = []
    final = run_sft(model, train, tmp_path / "run", OPTIONS, on_log=lambda s, m: steps.append(s))
    assert steps == [1, 2]
    assert (final / "model.safetensors").is_file()
    assert (final / "tokenizer.json").is_file()


def test_global_batch_must_split_into_devices_and_accumulation() -> None:
    options = SftOptions(global_batch_size=32, per_device_batch_size=4)
    assert accumulation_steps(options, processes=2) == 4
    with pytest.raises(InvalidInput):
        accumulation_steps(options, processes=3)


def test_resume_restores_the_checkpoint_weights_of_a_vlm(tmp_path: Path) -> None:
    """Qwen2.5-VL saves other key names than it uses in memory; resume must still load them."""
    from safetensors.torch import load_file

    from services.trainer.callbacks import TrainingStopped

    model, train = build_tiny_vlm(tmp_path / "vlm"), _vision_set(tmp_path)
    options = OPTIONS.model_copy(update={"max_steps": 3})
    straight = run_sft(model, train, tmp_path / "straight", options)
    with pytest.raises(TrainingStopped) as stopped:
        run_sft(model, train, tmp_path / "run", options, should_stop=lambda: True)
    assert stopped.value.step == 1
    steps: list[int] = []
    resumed = run_sft(
        model,
        train,
        tmp_path / "run",
        options,
        on_log=lambda step, _: steps.append(step),
        resume_from=Path(str(stopped.value.checkpoint)),
    )
    assert steps == [2, 3]
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_epoch_run_reports_the_steps_it_plans_before_the_first(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Description: shape {i}. Question: colour?"},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(6)
    ]
    train = _write(tmp_path / "text.json", rows)
    options = OPTIONS.model_copy(update={"max_steps": None, "epochs": 1.5})
    heard: list[tuple[str, int]] = []
    run_sft(
        build_tiny_text_lm(tmp_path / "lm"),
        train,
        tmp_path / "run",
        options,
        on_log=lambda step, _: heard.append(("step", step)),
        on_plan=lambda steps: heard.append(("plan", steps)),
    )
    (_, planned), *steps = heard
    assert heard[0][0] == "plan"
    assert steps == [("step", step) for step in range(1, planned + 1)]
    assert planned > 3  # more than one epoch of 3 batches: the epochs, not a cap, set it
