"""PTST mechanics on a tiny random VLM: each stage runs with its own cap and group size,
starts from the previous stage's weights, and resumes from a mid-stage checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.trainer.callbacks import TrainingStopped
from services.trainer.data import PromptRow, load_prompt_rows
from services.trainer.grpo import build_grpo_trainer, run_grpo_stage
from services.trainer.models import load_policy
from shared.contracts.specs import GrpoOptions, StageSpec
from shared.fixtures.tiny import build_tiny_vlm
from shared.fixtures.toy import generate_toy_dataset
from shared.rewards import InlineVerifier, Scorer, completion_text

pytestmark = pytest.mark.learning

STAGE_1 = StageSpec(max_completion_tokens=8, group_size=4, steps=2, prompts_per_step=2)
STAGE_2 = StageSpec(max_completion_tokens=12, group_size=2, steps=4, prompts_per_step=4)
# A high learning rate so that two steps visibly move a random model's weights.
OPTIONS = GrpoOptions(stages=[STAGE_1, STAGE_2], learning_rate=1e-2, beta=0.0, seed=0)
Log = list[tuple[int, dict[str, float]]]


def length_parity(completions: list[object], **kwargs: object) -> list[float]:
    """A reward that varies on a random model's output, so every step has a gradient."""
    return [float(len(completion_text(c)) % 2) for c in completions]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PromptRow]]:
    """A random tiny VLM and a few toy prompts."""
    root = tmp_path_factory.mktemp("ptst")
    toy = generate_toy_dataset(root / "toy", seed=0, n_train=16, n_test=0, tasks=["shape_colour"])
    return build_tiny_vlm(root / "base", seed=0), load_prompt_rows(toy.train_path)


def _stage(
    model: Path, rows: list[PromptRow], stage: StageSpec, out: Path, log: Log, **kw: object
) -> Path:
    scorer = Scorer(InlineVerifier())
    return run_grpo_stage(
        model,
        rows,
        stage,
        OPTIONS,
        out,
        reward_funcs=[length_parity],
        on_step=lambda step, metrics: log.append((step, metrics)),
        scorer=scorer,
        **kw,  # type: ignore[arg-type]
    )


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_stage_runs_with_its_own_cap_and_group(
    world: tuple[Path, list[PromptRow]], tmp_path: Path
) -> None:
    base, rows = world
    log_1: Log = []
    log_2: Log = []
    final_1 = _stage(base, rows, STAGE_1, tmp_path / "s1", log_1)
    final_2 = _stage(final_1, rows, STAGE_2, tmp_path / "s2", log_2)

    for log, stage in ((log_1, STAGE_1), (log_2, STAGE_2)):
        assert [step for step, _ in log] == list(range(1, stage.steps + 1))
        for _, metrics in log:
            assert metrics["completion_len_max"] <= stage.max_completion_tokens
            assert metrics["completions"] == (stage.prompts_per_step or 0) * stage.group_size
    # A random model rambles until the cap: stage 2's longer cap is really in force.
    assert max(m["completion_len_max"] for _, m in log_2) > STAGE_1.max_completion_tokens

    # Stage 2 starts from stage 1's final weights, not from the base model.
    base_w, final_1_w = _weights(base), _weights(final_1)
    assert not _same(base_w, final_1_w)
    trainer, _, _ = build_grpo_trainer(
        final_1, rows, STAGE_2, OPTIONS, tmp_path / "probe", reward_funcs=[length_parity]
    )
    start = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    assert _same(start, load_policy(final_1).model.state_dict())
    assert not _same(_weights(final_2), final_1_w)


def test_resume_from_a_mid_stage_checkpoint_continues_at_its_step(
    world: tuple[Path, list[PromptRow]], tmp_path: Path
) -> None:
    base, rows = world
    straight: Log = []
    reference = _stage(base, rows, STAGE_2, tmp_path / "straight", straight)

    first: Log = []
    polls: list[int] = []  # should_stop is asked once after every step
    with pytest.raises(TrainingStopped) as stopped:
        _stage(
            base, rows, STAGE_2, tmp_path / "run", first,
            should_stop=lambda: polls.append(1) or len(polls) >= 3, checkpoint_every=2,
        )  # fmt: skip
    assert stopped.value.step == 3
    # The regular checkpoint, and one where the run was stopped (for a later resume).
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert stopped.value.checkpoint == str(tmp_path / "run" / "checkpoint-3")
    assert Path(stopped.value.checkpoint).is_dir()
    assert not (tmp_path / "run" / "final").exists()

    # As after a crash: resume from the last regular checkpoint.
    second: Log = []
    resumed = _stage(
        base, rows, STAGE_2, tmp_path / "run", second, resume_from=tmp_path / "run" / "checkpoint-2"
    )
    assert [step for step, _ in second] == [3, 4]
    # Optimizer, scheduler, sampler and RNG state came back: the resumed run is the same run.
    lengths = [m["completion_len_mean"] for _, m in first[:2] + second]
    assert lengths == [m["completion_len_mean"] for _, m in straight]
    assert _same(_weights(resumed), _weights(reference))


def test_beta_above_zero_trains_against_a_reference_model(
    world: tuple[Path, list[PromptRow]], tmp_path: Path
) -> None:
    base, rows = world
    stage = STAGE_1.model_copy(update={"beta": 0.05})
    trainer, _, _ = build_grpo_trainer(
        base, rows, stage, OPTIONS, tmp_path / "probe", reward_funcs=[length_parity]
    )
    assert trainer.ref_model is not None
    log: Log = []
    _stage(base, rows, stage, tmp_path / "kl", log)
    assert log[0][1]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert log[1][1]["kl"] > 0.0
