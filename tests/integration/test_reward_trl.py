"""The in-process TRL-form reward inside a real TRL GRPOTrainer step on a tiny model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shared.rewards import TRLReward

pytest.importorskip("trl")

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from shared.fixtures.tiny import build_tiny_text_lm


class RecordingReward(TRLReward):
    """The registered reward, remembering what TRL passed in and what came back."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[tuple[list[Any], list[str], list[float | None]]] = []

    def __call__(
        self, completions: Sequence[Any], answer: Sequence[str] | None = None, **kwargs: Any
    ) -> list[float | None]:
        rewards = super().__call__(completions, answer, **kwargs)
        self.calls.append((list(completions), list(answer or []), rewards))
        return rewards


def test_grpo_step_uses_the_reward(tmp_path: Path) -> None:
    model_dir = build_tiny_text_lm(tmp_path / "lm", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = Dataset.from_list(
        [{"prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(8)]
    )
    hfrrf, fmt = RecordingReward("hfrrf"), RecordingReward("format")
    config = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[hfrrf, fmt],
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    completions, answers, rewards = hfrrf.calls[0]
    assert len(completions) == len(answers) == len(rewards) == 4
    assert set(answers) <= {str(2 * i) for i in range(8)}
    # a random model does not write the format, so the hard reward is 0.0, never None
    assert rewards == [0.0] * 4
    assert fmt.calls[0][2] == [0.0] * 4
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "rewards/hfrrf_reward/mean" in logged
