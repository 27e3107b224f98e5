"""``vr1 demo``: the whole Vision-R1 recipe on the toy world, as platform jobs, on a CPU.

1. the toy world and tiny models are generated offline;
2. two stand-in teachers are trained with ``sft`` jobs on the toy reference texts;
3. a ``pipeline`` job runs coldstart (those teachers) → SFT of a fresh student on the
   kept samples → GRPO in two compute-matched PTST stages → eval;
4. ``eval`` jobs measure the student before SFT, after SFT and after each stage;
5. ``report.json`` and ``report.md`` (with a reward / length plot) are written, and the
   command to look at the jobs in the dashboard is printed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from entrypoints.bootstrap import Embedded, embedded, run_shown
from entrypoints.console import Console, shown_path
from entrypoints.demo.dashboard import dashboard
from entrypoints.demo.report import markdown, plot_stages
from entrypoints.demo.teachers import describer_rows, reasoner_rows, register_teacher_data
from shared.cold_data import ColdSample
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import (
    ColdstartOptions,
    EngineSpec,
    EvalOptions,
    EvalSpec,
    GenerationParams,
    GrpoOptions,
    PipelineSpec,
    SftOptions,
    SftSpec,
    StageSpec,
)
from shared.contracts.status import JobStatus
from shared.datasets import register_dataset
from shared.db.models import Job, Metric, Stage
from shared.errors import VR1Error
from shared.fixtures.toy import generate_toy_dataset, read_rows
from shared.settings import BaseVR1Settings


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and the training recipe; tuned for a 2-core CPU in a few minutes."""

    n_train: int = 256
    n_test: int = 128
    n_cold: int = 4  # one clean sample per colour: enough to teach the format, not the task
    describer_steps: int = 100
    reasoner_steps: int = 400
    sft_steps: int = 300  # fewer leaves greedy output well formed but sampled output not
    eval_max_new_tokens: int = 64
    stages: tuple[StageSpec, ...] = field(
        default_factory=lambda: (
            StageSpec(max_completion_tokens=24, group_size=8, steps=75, prompts_per_step=8),
            StageSpec(max_completion_tokens=48, group_size=4, steps=75, prompts_per_step=16),
        )
    )
    grpo_learning_rate: float = 5e-4
    sft_learning_rate: float = 1e-3
    torch_threads: int = 1


def _fast_sft(config: DemoConfig, steps: int, *, freeze_vision: bool) -> SftOptions:
    return SftOptions(
        learning_rate=config.sft_learning_rate,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_steps=steps,
        max_length=256,
        global_batch_size=8,
        per_device_batch_size=8,
        freeze_vision=freeze_vision,
        seed=0,
    )


def _register(
    platform: Embedded, name: str, kind: str, rows: list[dict[str, Any]], root: Path
) -> str:
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    team = platform.team()
    with platform.db.session() as session:
        request = DatasetCreate.model_validate({"name": name, "kind": kind, "path": str(path)})
        dataset, _ = register_dataset(
            session, team=team, request=request, roots=[root], store=platform.store
        )
        return str(dataset.id)


def _teacher_data(platform: Embedded, name: str, samples: list[ColdSample]) -> str:
    team = platform.team()
    with platform.db.session() as session:
        return register_teacher_data(
            session, platform.store, team_id=team.id, name=name, samples=samples
        )


def _run(platform: Embedded, console: Console, spec: Any, name: str) -> Job:
    job = run_shown(platform, console, spec, name=name)
    if job.status != JobStatus.SUCCEEDED:
        raise VR1Error(f"demo step {name} ended {job.status}: {job.error}", job_id=str(job.id))
    return job


def _accuracy(job: Job) -> tuple[float, float]:
    (table,) = job.output["accuracy"].values()
    return float(table["accuracy"]), float(table["format_rate"])


def _one_per_answer(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows, spreading over answers first (one sample per colour)."""
    picked: list[dict[str, Any]] = []
    for row in rows:
        if len(picked) < n and row["answer"] not in {p["answer"] for p in picked}:
            picked.append(row)
    return picked + [r for r in rows if r not in picked][: n - len(picked)]


def run_demo(
    out: Path,
    console: Console,
    *,
    seed: int = 0,
    settings: BaseVR1Settings | None = None,
    config: DemoConfig | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``, showing it on ``console``; returns the report (also
    written to ``out/report.json``)."""
    from shared.fixtures.tiny import build_tiny_text_lm, build_tiny_vlm

    config = config or DemoConfig()
    # Training processes read this; one thread is faster for tiny models and reproducible.
    os.environ.setdefault("VR1_TORCH_THREADS", str(config.torch_threads))
    out = out.resolve()
    shutil.rmtree(out / "platform", ignore_errors=True)
    platform = embedded(settings or BaseVR1Settings(home=out / "platform"), verbose=console.verbose)

    with console.phase("toy world (shape colours) and tiny models, built offline") as phase:
        toy = generate_toy_dataset(
            out / "data",
            seed=seed,
            n_train=config.n_train,
            n_test=config.n_test,
            tasks=["shape_colour"],
        )
        train, test = read_rows(toy.train_path), read_rows(toy.test_path)
        models = out / "models"
        teacher_vlm = build_tiny_vlm(models / "teacher-describer", seed=seed + 1)
        teacher_lm = build_tiny_text_lm(models / "teacher-reasoner", seed=seed + 2, size="teacher")
        student = build_tiny_vlm(models / "student", seed=seed)

        source = _register(
            platform, "toy-source", "source", _one_per_answer(train, config.n_cold), toy.root
        )
        rl_set = _register(platform, "toy-rl", "rl", train, toy.root)
        test_set = _register(platform, "toy-test", "eval", test, toy.root)
        phase.figures = f"{len(train)} train / {len(test)} test items, 3 tiny models"

    console.say("stand-in teachers: sft jobs on the toy reference texts (not real teachers)")
    describer_data = _teacher_data(
        platform, "stand-in-describer-data", describer_rows(train, toy.root)
    )
    reasoner_data = _teacher_data(platform, "stand-in-reasoner-data", reasoner_rows(train))
    long_prompts = {"max_length": 512}  # teacher prompts are the platform's full templates
    describer_opts = _fast_sft(config, config.describer_steps, freeze_vision=False)
    reasoner_opts = _fast_sft(config, config.reasoner_steps, freeze_vision=False)
    describer = _run(
        platform,
        console,
        SftSpec(
            model=str(teacher_vlm),
            dataset_id=describer_data,
            **describer_opts.model_copy(update=long_prompts).model_dump(),
        ),
        "stand-in describer (sft)",
    )
    reasoner = _run(
        platform,
        console,
        SftSpec(
            model=str(teacher_lm),
            dataset_id=reasoner_data,
            **reasoner_opts.model_copy(update=long_prompts).model_dump(),
        ),
        "stand-in reasoner (sft)",
    )

    greedy = GenerationParams(max_new_tokens=128, temperature=0.0)
    eval_opts = EvalOptions(max_new_tokens=config.eval_max_new_tokens, batch_size=64, seed=seed)
    base = _run(
        platform,
        console,
        EvalSpec(model=str(student), dataset_ids=[test_set], **eval_opts.model_dump()),
        "eval base student",
    )

    pipeline = PipelineSpec(
        base_model=str(student),
        source_dataset_id=source,
        rl_dataset_id=rl_set,
        eval_dataset_ids=[test_set],
        coldstart=ColdstartOptions(
            captioner=EngineSpec(
                model=describer.output["checkpoint_uri"], device="cpu", generation=greedy
            ),
            reasoner=EngineSpec(
                model=reasoner.output["checkpoint_uri"], device="cpu", generation=greedy
            ),
            chunk_size=8,
            output_name="toy-cold",
        ),
        sft=_fast_sft(config, config.sft_steps, freeze_vision=True),
        grpo=GrpoOptions(
            stages=list(config.stages),
            learning_rate=config.grpo_learning_rate,
            lr_scheduler="linear",
            beta=0.0,
            temperature=1.0,
            seed=seed,
        ),
        eval=eval_opts,
    )
    console.say("pipeline job: coldstart → sft → grpo (PTST) → eval")
    parent = _run(platform, console, pipeline, "toy pipeline")
    report = _report(platform, console, out, parent, base, eval_opts, test_set, config)
    for line in dashboard(platform).lines():
        console.say(line)
    return report


def _children(platform: Embedded, parent: Job) -> dict[str, Job]:
    with platform.db.session() as session:
        rows = session.scalars(select(Job).where(Job.parent_id == parent.id))
        return {job.kind: job for job in rows}


def _report(
    platform: Embedded,
    console: Console,
    out: Path,
    parent: Job,
    base: Job,
    eval_opts: EvalOptions,
    test_set: str,
    config: DemoConfig,
) -> dict[str, Any]:
    children = _children(platform, parent)
    cold, grpo = children["coldstart"], children["grpo"]
    with platform.db.session() as session:
        stages = list(
            session.scalars(select(Stage).where(Stage.job_id == grpo.id).order_by(Stage.idx))
        )
        metrics = list(session.scalars(select(Metric).where(Metric.job_id == grpo.id)))
    sft_ckpt = children["sft"].output["checkpoint_uri"]
    after_sft = _run(
        platform,
        console,
        EvalSpec(model=sft_ckpt, dataset_ids=[test_set], **eval_opts.model_dump()),
        "eval after sft",
    )
    # The pipeline's own eval child measured the last stage; the others are measured here.
    after_stages = [
        _accuracy(
            _run(
                platform,
                console,
                EvalSpec(
                    model=s.checkpoint_uri or "", dataset_ids=[test_set], **eval_opts.model_dump()
                ),
                f"eval after stage {s.idx + 1}",
            )
        )[0]
        for s in stages[:-1]
    ] + [_accuracy(children["eval"])[0]]
    funnel = cold.output["funnel"]
    sft_acc, sft_format = _accuracy(after_sft)
    report = {
        "coldstart": {
            "items_in": funnel["items_in"],
            "kept": funnel["kept"],
            "rejected": funnel["rejected"],
            "export_dir": str(platform.store.local_path(cold.output["export_uri"])),
        },
        "sft": {"format_rate": sft_format, "accuracy": sft_acc},
        "grpo": {
            "stages": [_stage_entry(s, spec) for s, spec in zip(stages, config.stages, strict=True)]
        },
        "eval": {"base": _accuracy(base)[0], "after_sft": sft_acc, "after_stages": after_stages},
    }
    series, boundaries, offset = [], [], 0
    for stage in stages:
        points: dict[int, dict[str, Any]] = {}
        for m in metrics:
            if m.stage_idx == stage.idx:
                points.setdefault(m.step, {"step": offset + m.step})[m.name] = m.value
        series += [points[k] for k in sorted(points)]
        offset += max(points, default=0)
        boundaries.append(offset)
    plotted = plot_stages(series, boundaries[:-1], out / "grpo_stages.png")
    extra = {"pipeline_job": str(parent.id), **{k: str(v.id) for k, v in children.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report, extra, "grpo_stages.png" if plotted else None))
    evals = report["eval"]
    accuracies = [evals["base"], evals["after_sft"], *evals["after_stages"]]
    console.say(
        "accuracy on the toy test split (base → sft → each grpo stage): "
        + " → ".join(f"{a:.3f}" for a in accuracies)
    )
    console.say(f"report: {shown_path(out / 'report.md')} (and report.json)")
    return report


def _stage_entry(stage: Stage, spec: StageSpec) -> dict[str, Any]:
    summary = stage.summary
    return {
        "max_completion_tokens": spec.max_completion_tokens,
        "group_size": spec.group_size,
        "steps": spec.steps,
        "reward_mean": float(summary.get("reward_mean", 0.0)),
        "accuracy": float(summary.get("accuracy", 0.0)),
        "completion_len_mean": float(summary.get("completion_len_mean", 0.0)),
    }


__all__ = ["DemoConfig", "run_demo"]
