"""PTST: GRPO in stages, each a TRL run with its own completion cap and group size.

TRL cannot change the completion length or the group size inside one run, so the
platform orchestrates: stage k starts from stage k-1's final weights, each stage's
state lives in its ``stages`` row (pending → running → succeeded), and a relaunched run
skips finished stages and resumes the current one from its newest checkpoint.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from functools import partial
from typing import Any

from sqlalchemy import select

from services.trainer.callbacks import TrainingStopped
from services.trainer.grpo import run_grpo_stage
from services.trainer.inputs import prompt_rows
from services.trainer.reporting import run_name, save_tracker_files
from services.trainer.settings import TrainerSettings
from services.trainer.tracking import Tracker, latest_checkpoint
from shared.contracts.specs import GrpoSpec, StageSpec
from shared.contracts.status import StageStatus
from shared.db.models import Metric
from shared.events import EventType
from shared.storage import path_from_uri

SUMMARY_KEYS = (
    "reward_mean",
    "accuracy",
    "format_rate",
    "completion_len_mean",
    "completion_len_max",
    "truncated_frac",
    "consistency",
    "kl",
    "step_time_s",
)


def stage_name(idx: int, stage: StageSpec) -> str:
    """A stage's display name: its own, or 'stage-N <cap>x<group>'."""
    return stage.name or f"stage-{idx + 1} {stage.max_completion_tokens}x{stage.group_size}"


def reward_funcs(spec: GrpoSpec) -> list[Any]:
    """The job's reward by name: over HTTP when a service URL is set, else in-process."""
    if spec.reward_url:
        from shared.reward_client import as_trl_reward

        return [as_trl_reward(spec.reward, base_url=spec.reward_url)]
    from shared.rewards import reward_fn

    return [reward_fn(spec.reward)]


def summarize(tracker: Tracker, idx: int, last: int = 10) -> dict[str, float]:
    """Means of the stage's last steps, and its step count."""
    with tracker.db.session() as session:
        rows = session.scalars(
            select(Metric).where(Metric.job_id == tracker.job_id, Metric.stage_idx == idx)
        )
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in rows:
            series[row.name].append((row.step, row.value))
    summary = {"steps": float(max((s for s, _ in series.get("loss", [])), default=0))}
    for key in SUMMARY_KEYS:
        values = [v for _, v in sorted(series.get(key, []))][-last:]
        if values:
            summary[key] = statistics.fmean(values)
    return summary


class OffPolicyWatch:
    """A stage's step logger that also warns, once per attempt, when vLLM's rollouts drift
    from the policy: a mean per-token gap above the spec's ``warn_above``."""

    def __init__(self, tracker: Tracker, idx: int, threshold: float) -> None:
        self.tracker, self.idx, self.threshold = tracker, idx, threshold
        self.warned = False

    def __call__(self, step: int, values: dict[str, float]) -> None:
        self.tracker.log(self.idx, step, values)
        gap = values.get("rollout_logp_gap")
        if self.warned or gap is None or gap <= self.threshold:
            return
        self.warned = True
        ratios = [values.get(f"is_ratio_{k}", float("nan")) for k in ("min", "max")]
        self.tracker.warn(
            EventType.OFF_POLICY,
            f"step {step}: vLLM's rollouts are {gap:.3g} nats/token from the policy (warns "
            f"above {self.threshold:g}); importance ratios {ratios[0]:.3g}-{ratios[1]:.3g}, "
            f"{values.get('is_clipped_frac', 0.0):.0%} clipped",
            stage_idx=self.idx,
            step=step,
            **{k: v for k, v in values.items() if k.startswith(("rollout_logp", "is_"))},
        )


def run_grpo_job(tracker: Tracker, settings: TrainerSettings, spec: GrpoSpec) -> dict[str, object]:
    """Run every unfinished stage in order; returns the last checkpoint and stage summaries."""
    configs = [(stage_name(i, s), s.model_dump(mode="json")) for i, s in enumerate(spec.stages)]
    rows = tracker.ensure_stages(configs)
    prompts = prompt_rows(tracker.db, tracker.store, spec.dataset_id)
    weights = path_from_uri(spec.model)
    funcs = reward_funcs(spec)
    label = run_name(tracker)
    summaries = []
    checkpoint_uri: str | None = None
    for idx, stage in enumerate(spec.stages):
        row = rows[idx]
        if row.status == StageStatus.SUCCEEDED and row.checkpoint_uri:
            checkpoint_uri = row.checkpoint_uri
            weights = path_from_uri(checkpoint_uri)  # never redone
            summaries.append(row.summary)
            continue
        out_dir = tracker.workdir / f"stage-{idx}"
        resume = latest_checkpoint(out_dir)
        tracker.start_stage(idx, resume)
        tracker.update_stage(idx, summary={"initial_weights": str(weights)})
        try:
            final = run_grpo_stage(
                weights,
                prompts,
                stage,
                spec,
                out_dir,
                reward_funcs=funcs,
                on_step=OffPolicyWatch(tracker, idx, spec.off_policy.warn_above),
                on_samples=partial(tracker.keep_samples, idx),
                should_stop=tracker.should_stop,
                resume_from=resume,
                checkpoint_every=settings.checkpoint_every,
                run_name=label,
            )
        except TrainingStopped as stopped:
            stopped_at = {"stopped_at_step": stopped.step}
            tracker.finish_stage(idx, StageStatus.CANCELLED, summary=stopped_at)
            raise
        save_tracker_files(tracker, out_dir, idx)
        checkpoint_uri = tracker.save_checkpoint(
            final,
            f"runs/{tracker.job_id}/checkpoints/stage-{idx}",
            name=stage_name(idx, stage),
            stage_idx=idx,
        )
        summary = {**summarize(tracker, idx), "initial_weights": str(weights)}
        tracker.finish_stage(
            idx, StageStatus.SUCCEEDED, checkpoint_uri=checkpoint_uri, summary=summary
        )
        summaries.append(summary)
        weights = path_from_uri(checkpoint_uri)  # the next stage starts from this one
    return {"checkpoint_uri": checkpoint_uri, "stages": summaries}
