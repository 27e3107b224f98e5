"""The pieces that keep vLLM rollouts on-policy, each alone: the prompt hand-over, the
per-step gap figures, the correction settings and the warning (the whole path runs on
vLLM in tests/vllm)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from services.trainer.onpolicy import (
    RolloutPromptMismatch,
    collapse_image_runs,
    correction_arguments,
    gap_figures,
    gap_totals,
    hand_over_unexpanded,
    rollout_dtype,
    sampling_rules,
)
from services.trainer.ptst import OffPolicyWatch
from shared.contracts.specs import OffPolicyCorrection, RolloutVllmOptions
from shared.engines.loading import SUPPRESSED_LOGIT_BIAS
from shared.events import EventType

PAD = 6


class Generation:
    """TRL's colocated generation as seen from outside: it expands each single pad to
    ``expand`` pads, as vLLM's processor does, and returns the prompt ids it used."""

    def __init__(self, expand: int = 4) -> None:
        self.expand = expand
        self.given: list[list[int]] = []

    def generate(
        self, prompts: list[list[int]], images: Any, num_generations: int, profiler: Any = None
    ) -> tuple[list[list[int]], list[list[int]], list[list[float]], None]:
        self.given = [list(p) for p in prompts]
        expanded = [[t for token in p for t in ([PAD] * self.expand if token == PAD else [token])]
                    for p in prompts]  # fmt: skip
        return expanded, [[9]] * len(prompts), [[-0.5]] * len(prompts), None


def test_image_runs_collapse_to_one_pad_each() -> None:
    assert collapse_image_runs([1, 5, PAD, PAD, PAD, PAD, 7, 3], PAD) == [1, 5, PAD, 7, 3]
    assert collapse_image_runs([PAD, PAD, 1, PAD, PAD], PAD) == [PAD, 1, PAD]
    assert collapse_image_runs([1, 2, 3], PAD) == [1, 2, 3]


def test_vllm_gets_unexpanded_image_prompts_and_must_expand_them_back() -> None:
    generation = Generation(expand=4)
    hand_over_unexpanded(generation, PAD)
    policy = [[1, 5, PAD, PAD, PAD, PAD, 7], [1, 2, 3]]
    images = [["image"], None]  # the second prompt has no image: handed over as it is
    prompts, completions, *_ = generation.generate(
        prompts=policy, images=images, num_generations=1, profiler=None
    )
    assert generation.given == [[1, 5, PAD, 7], [1, 2, 3]]
    assert prompts == policy
    assert completions == [[9], [9]]

    wrong = Generation(expand=3)  # vLLM would see a prompt the loss does not score
    hand_over_unexpanded(wrong, PAD)
    with pytest.raises(RolloutPromptMismatch, match="6 tokens where the policy scores 7"):
        wrong.generate(prompts=policy, images=images, num_generations=1)


def test_text_only_rollouts_pass_through() -> None:
    generation = Generation()
    hand_over_unexpanded(generation, PAD)
    generation.generate(prompts=[[1, PAD, PAD]], images=None, num_generations=2)
    assert generation.given == [[1, PAD, PAD]]


def test_one_suppression_two_forms() -> None:
    assert sampling_rules([6, 7], vllm=True) == {
        "logit_bias": {6: SUPPRESSED_LOGIT_BIAS, 7: SUPPRESSED_LOGIT_BIAS}
    }
    # The transformers rollouts use the policy's biased head; TRL's own -inf is turned off.
    assert sampling_rules([6, 7], vllm=False) == {"suppress_tokens": None}


def test_gap_figures_per_token() -> None:
    correction = OffPolicyCorrection(cap=2.0)
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    sampler = torch.tensor([[-1.0, -2.5, -0.5], [-2.0, float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    figures = gap_figures(gap_totals(policy, sampler, mask, correction))
    # Four valid tokens (the NaN and the masked one are left out): gaps 0, 0.5, 0, 1.0.
    assert figures["rollout_logp_gap"] == pytest.approx(1.5 / 4)
    assert figures["rollout_logp_gap_signed"] == pytest.approx(1.5 / 4)
    assert figures["rollout_logp_gap_max"] == pytest.approx(1.0)
    assert figures["is_ratio_min"] == pytest.approx(1.0)
    assert figures["is_ratio_max"] == pytest.approx(math.e)
    assert figures["is_ratio_mean"] == pytest.approx((2 + math.exp(0.5) + math.e) / 4)
    assert figures["is_clipped_frac"] == pytest.approx(1 / 4)  # e > 2


def test_gap_figures_per_sequence_and_over_processes() -> None:
    correction = OffPolicyCorrection(mode="sequence_mask", cap=2.0)
    policy = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    sampler = torch.tensor([[-1.2, -1.2], [-0.9, -1.0]])
    mask = torch.ones(2, 2)
    one = gap_totals(policy, sampler, mask, correction)
    # Two processes' rows, as accelerate's gather concatenates them.
    figures = gap_figures(torch.cat([one, one]))
    assert figures["rollout_logp_gap"] == pytest.approx(0.5 / 4)
    assert figures["rollout_logp_gap_signed"] == pytest.approx(0.3 / 4)
    assert figures["is_ratio_max"] == pytest.approx(math.exp(0.4))
    assert figures["is_ratio_min"] == pytest.approx(math.exp(-0.1))
    assert figures["is_clipped_frac"] == 0.0
    empty = gap_totals(policy, sampler, torch.zeros(2, 2), correction)
    assert gap_figures(empty) == {}


def test_correction_and_dtype_are_set_never_left_to_defaults() -> None:
    assert correction_arguments(OffPolicyCorrection()) == {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "token_truncate",
        "vllm_importance_sampling_clip_max": 2.0,
        "vllm_importance_sampling_clip_min": None,
    }
    assert correction_arguments(OffPolicyCorrection(mode="off")) == {
        "vllm_importance_sampling_correction": False
    }
    cpu, gpu = SimpleNamespace(bf16=False, fp16=False), SimpleNamespace(bf16=True, fp16=False)
    assert rollout_dtype(RolloutVllmOptions(), cpu, torch.float32) == "float32"
    assert rollout_dtype(RolloutVllmOptions(), gpu, torch.float32) == "bfloat16"  # autocast
    assert rollout_dtype(RolloutVllmOptions(dtype="bfloat16"), cpu, torch.float32) == "bfloat16"


class Tracker:
    def __init__(self) -> None:
        self.logged: list[tuple[int | None, int, dict[str, float]]] = []
        self.warnings: list[tuple[EventType, str, dict[str, Any]]] = []

    def log(self, stage_idx: int | None, step: int, values: dict[str, float]) -> None:
        self.logged.append((stage_idx, step, values))

    def warn(self, type: EventType, message: str, **facts: Any) -> None:
        self.warnings.append((type, message, facts))


def test_a_drifting_stage_warns_once() -> None:
    tracker = Tracker()
    watch = OffPolicyWatch(tracker, 1, threshold=0.05)  # type: ignore[arg-type]
    watch(1, {"loss": 0.1, "rollout_logp_gap": 0.001})
    watch(2, {"loss": 0.1})  # transformers rollouts: no gap measured
    assert tracker.warnings == []
    drifting = {"rollout_logp_gap": 0.3, "is_ratio_min": 0.01, "is_ratio_max": 15.0}
    watch(3, {**drifting, "is_clipped_frac": 0.02})
    watch(4, drifting)
    assert [step for _, step, _ in tracker.logged] == [1, 2, 3, 4]  # every step logged
    [(type, message, facts)] = tracker.warnings
    assert type == EventType.OFF_POLICY
    assert "0.3 nats/token" in message
    assert "2% clipped" in message
    assert facts["stage_idx"] == 1
    assert facts["step"] == 3
    assert facts["rollout_logp_gap"] == 0.3
