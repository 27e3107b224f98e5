"""Job specs: defaults from the paper, good specs accepted, bad ones refused clearly."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.contracts.queues import QUEUES, TASK_QUEUES, queue_for
from shared.contracts.specs import (
    GrpoSpec,
    PipelineSpec,
    SftSpec,
    parse_spec,
    referenced_datasets,
    spec_warnings,
)

DS = "6f1c1c0e-7c7a-4d0e-9a53-2b8f1f6f0a11"
ENGINE = {"engine": "transformers", "model": "/m"}


def test_sft_defaults_are_the_papers() -> None:
    spec = parse_spec({"kind": "sft", "model": "/m", "dataset_id": DS})
    assert isinstance(spec, SftSpec)
    assert (spec.learning_rate, spec.lr_scheduler, spec.warmup_ratio) == (5e-6, "cosine", 0.05)
    assert (spec.epochs, spec.max_length, spec.global_batch_size) == (2.0, 16384, 32)
    assert spec.freeze_vision is True
    assert spec.lora is None


def test_grpo_defaults_are_the_papers_ptst_schedule() -> None:
    spec = parse_spec({"kind": "grpo", "model": "/m", "dataset_id": DS})
    assert isinstance(spec, GrpoSpec)
    assert [(s.max_completion_tokens, s.group_size, s.steps) for s in spec.stages] == [
        (4096, 16, 100),
        (8192, 8, 100),
    ]
    assert (spec.epsilon, spec.beta, spec.reward) == (0.2, 1e-2, "hfrrf")
    assert spec_warnings(spec) == []


def test_stages_that_are_not_compute_matched_are_warned_about() -> None:
    spec = parse_spec(
        {
            "kind": "grpo",
            "model": "/m",
            "dataset_id": DS,
            "stages": [
                {"max_completion_tokens": 4096, "group_size": 16, "steps": 10},
                {"max_completion_tokens": 8192, "group_size": 16, "steps": 10},
            ],
        }
    )
    (warning,) = spec_warnings(spec)
    assert "not compute-matched" in warning
    assert "8192x16" in warning


def test_eval_defaults_and_pipeline_references() -> None:
    spec = parse_spec({"kind": "eval", "model": "/m", "dataset_ids": [DS]})
    assert spec.kind == "eval"
    assert (spec.temperature, spec.top_p, spec.max_tries) == (0.6, 0.95, 5)
    pipeline = parse_spec(
        {
            "kind": "pipeline",
            "base_model": "/m",
            "source_dataset_id": DS,
            "eval_dataset_ids": ["e1"],
            "coldstart": {"captioner": ENGINE, "reasoner": ENGINE},
        }
    )
    assert isinstance(pipeline, PipelineSpec)
    assert referenced_datasets(pipeline) == [DS, "e1"]


def test_specs_round_trip_through_json() -> None:
    spec = parse_spec(
        {"kind": "coldstart", "dataset_id": DS, "captioner": ENGINE, "reasoner": ENGINE}
    )
    assert parse_spec(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"kind": "nope"}, "kind"),
        ({"model": "/m"}, "kind"),
        ({"kind": "sft", "model": "/m", "dataset_id": DS, "epochs": "two"}, "epochs"),
        ({"kind": "sft", "model": "/m", "dataset_id": DS, "epochs": -1}, "epochs"),
        ({"kind": "sft", "model": "", "dataset_id": DS}, "model"),
        ({"kind": "sft", "model": "/m", "dataset_id": DS, "extra_field": 1}, "extra_field"),
        ({"kind": "grpo", "model": "/m", "dataset_id": DS, "stages": []}, "stages"),
        (
            {
                "kind": "grpo",
                "model": "/m",
                "dataset_id": DS,
                "stages": [{"max_completion_tokens": 16, "group_size": 1, "steps": 1}],
            },
            "group_size",
        ),
        ({"kind": "eval", "model": "/m", "dataset_ids": []}, "dataset_ids"),
        (
            {
                "kind": "sft",
                "model": "/m",
                "dataset_id": DS,
                "distributed": {"num_processes": 3, "num_machines": 2},
            },
            "must be a multiple of num_machines",
        ),
        (
            {
                "kind": "coldstart",
                "dataset_id": DS,
                "captioner": {"engine": "openai", "model": "m"},
                "reasoner": ENGINE,
            },
            "base_url",
        ),
        (
            {
                "kind": "coldstart",
                "dataset_id": DS,
                "captioner": {**ENGINE, "api_key_env": "sk-live-123"},
                "reasoner": ENGINE,
            },
            "api_key_env",
        ),
    ],
)
def test_bad_specs_are_refused_naming_the_field(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec(data)
    assert fragment in str(caught.value)


def test_every_task_routes_to_a_known_queue() -> None:
    assert set(TASK_QUEUES.values()) <= set(QUEUES)
    assert queue_for("caption.batch") == "caption"
    assert queue_for("reason.batch") == "reason"
    assert queue_for("train.launch") == "train"
    for task, queue in TASK_QUEUES.items():
        assert task.split(".")[0] == queue
