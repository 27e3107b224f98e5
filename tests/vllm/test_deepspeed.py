"""DeepSpeed on this CPU, as the paper's SFT ran it (ZeRO-3): an ``sft`` job with two
training processes and the job's ``deepspeed_config`` runs through DeepSpeed, writes one
record, and ends in a plain checkpoint the next job loads.

(FSDP is passed through in an ``accelerate_config``; accelerate runs it on GPUs only and
falls back to plain data parallel on CPUs, so it is not tested here.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from entrypoints.bootstrap import embedded
from services.trainer.models import load_policy
from shared.cold_data import ColdSample
from shared.contracts.specs import SftSpec
from shared.db.models import Metric
from shared.fixtures.tiny import build_tiny_vlm
from shared.settings import BaseVR1Settings
from tests.helpers import register_cold, write_image


@pytest.mark.timeout(600)
def test_sft_with_zero3_on_two_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR1_TORCH_THREADS", "1")
    monkeypatch.setenv("VR1_CHECKPOINT_EVERY", "2")
    platform = embedded(BaseVR1Settings(home=tmp_path / "home"))
    colours = ("red", "green", "blue", "yellow")
    samples = [
        ColdSample(
            "What colour is the shape?",
            f"<think>It is {c}.</think><answer>{c}</answer>",
            [write_image(tmp_path / f"{c}.png", c, size=56)],
        )
        for c in colours
    ]
    cold = register_cold(platform, "cold", samples)
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({
        "zero_optimization": {"stage": 3},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
    }))  # fmt: skip
    spec = SftSpec(
        model=str(build_tiny_vlm(tmp_path / "base", size="tiny-h32")),
        dataset_id=cold,
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_steps=4,
        global_batch_size=4,
        per_device_batch_size=2,
        max_length=256,
        distributed={"num_processes": 2, "deepspeed_config": str(config)},
    )
    job = platform.run(spec)
    assert job.status == "succeeded", job.error
    run_dir = platform.store.local_path(platform.store.uri_for(f"runs/{job.id}"))
    run_log = (run_dir / "logs" / "attempt-1.log").read_text()  # what the run wrote
    assert "DeepSpeed" in run_log, run_log[-3000:]
    # DeepSpeed's own checkpoint layout: ZeRO partitions, one per process.
    shards = sorted(p.name for p in run_dir.glob("**/checkpoint-2/global_step2/*model_states.pt"))
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ], sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("**/*"))
    with platform.db.session() as session:
        per_step = session.execute(
            select(Metric.step, func.count())
            .where(Metric.job_id == job.id, Metric.name == "loss")
            .group_by(Metric.step)
        ).all()
    assert sorted(per_step) == [(step, 1) for step in range(1, 5)]  # one record, not two
    checkpoint = platform.store.local_path(job.output["checkpoint_uri"])
    loaded = load_policy(checkpoint)  # ZeRO-3 gathered the weights into a plain model
    assert sum(p.numel() for p in loaded.model.parameters()) > 0
