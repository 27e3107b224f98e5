// SFT and GRPO jobs: the PTST stage table, metric charts over the global step, and (GRPO)
// the rollouts the trainer kept for people to read.

import { downloadButton, get } from "./api.js";
import { metricChart, stageColour, stageSpans } from "./chart.js";
import {
  badge,
  duration,
  fill,
  h,
  note,
  numeric,
  secondsBetween,
  section,
  table,
  when,
} from "./dom.js";
import { samplesSection } from "./samples.js";

// Known series first, in the order people read a GRPO run; others follow by name.
const TITLES = {
  reward_mean: "Reward (mean)",
  accuracy: "Accuracy",
  format_rate: "Format rate",
  completion_len_mean: "Completion length (mean)",
  completion_len_max: "Completion length (max)",
  truncated_frac: "Truncated fraction",
  consistency: "Think/answer consistency",
  kl: "KL",
  loss: "Loss",
  learning_rate: "Learning rate",
  grad_norm: "Gradient norm",
  step_time_s: "Step time (s)",
  completions: "Completions per step",
  rollout_logp_gap: "Rollout vs policy: mean |gap| (nats/token)",
  rollout_logp_gap_signed: "Rollout vs policy: signed mean gap",
  rollout_logp_gap_max: "Rollout vs policy: max |gap|",
  is_ratio_mean: "Importance ratio (mean)",
  is_ratio_min: "Importance ratio (min)",
  is_ratio_max: "Importance ratio (max)",
  is_clipped_frac: "Ratios truncated or masked (share)",
  gpu_memory_peak_gb: "Peak GPU memory (GB)",
};
const WITH_CAPS = new Set(["completion_len_mean", "completion_len_max"]);
const ORDER = Object.keys(TITLES);

function metricOrder(a, b) {
  const ia = ORDER.indexOf(a);
  const ib = ORDER.indexOf(b);
  if (ia >= 0 && ib >= 0) return ia - ib;
  if (ia >= 0 || ib >= 0) return ia >= 0 ? -1 : 1;
  return a.localeCompare(b);
}

function shape(stage) {
  const config = stage.config || {};
  return config.max_completion_tokens
    ? `${config.max_completion_tokens} × ${config.group_size}`
    : "—";
}

function planned(stage) {
  return stage.config?.steps ?? stage.config?.max_steps ?? null;
}

function checkpointCell(stage, artifacts) {
  if (!stage.checkpoint_uri) return h("span", { class: "muted" }, "—");
  const artifact = artifacts.find((a) => a.uri === stage.checkpoint_uri);
  return artifact ? downloadButton(artifact) : h("span", {}, "saved");
}

function stageRow(stage, stepsDone, artifacts) {
  const done =
    stage.status === "succeeded"
      ? (planned(stage) ?? stepsDone.get(stage.idx))
      : stepsDone.get(stage.idx);
  const took = stage.started_at
    ? duration(secondsBetween(stage.started_at, stage.finished_at))
    : "—";
  return h(
    "tr",
    { "data-stage": stage.idx },
    h("td", { class: "num" }, swatch(stage.idx), String(stage.idx + 1)),
    h("td", {}, stage.name),
    h("td", { class: "num" }, shape(stage)),
    h("td", { class: "num" }, `${done ?? 0}/${planned(stage) ?? "?"}`),
    h("td", {}, badge(stage.status)),
    h("td", {}, when(stage.started_at)),
    h("td", {}, when(stage.finished_at)),
    h("td", { class: "num" }, took),
    h("td", { class: "actions" }, checkpointCell(stage, artifacts)),
  );
}

function swatch(idx) {
  return h("span", { class: "swatch", style: `background:${stageColour(idx)}` });
}

function stageTable(stages, stepsDone, artifacts) {
  const head = [numeric("#"), "Stage", numeric("Cap × group"), numeric("Steps"), "Status"];
  head.push("Started", "Finished", numeric("Duration"), "Checkpoint");
  return table(
    "stages",
    head,
    stages.map((stage) => stageRow(stage, stepsDone, artifacts)),
  );
}

function legend(stages) {
  return h(
    "div",
    { class: "legend" },
    stages.map((stage) =>
      h(
        "span",
        { class: "legend-item", "data-stage": stage.idx },
        swatch(stage.idx),
        stage.name,
        stage.config?.max_completion_tokens
          ? h("span", { class: "muted" }, ` (${shape(stage)})`)
          : null,
      ),
    ),
  );
}

/** Metric points by name, fetched stage by stage; a stage is read in full once it ended. */
class MetricStore {
  constructor(jobId) {
    this.jobId = jobId;
    this.series = new Map(); // name → Map("stage:step" → point)
    this.lastStep = new Map(); // stage → last step read
    this.complete = new Set();
  }

  async update(stages) {
    let added = 0;
    for (const stage of stages) {
      if (this.complete.has(stage.idx) || stage.status === "pending") continue;
      const ended = stage.status !== "running";
      const after = this.lastStep.get(stage.idx) ?? -1;
      const points = await get(`/v1/jobs/${this.jobId}/metrics`, {
        stage: stage.idx,
        after_step: after,
        limit: 100000,
      });
      for (const point of points) {
        if (!this.series.has(point.name)) this.series.set(point.name, new Map());
        this.series.get(point.name).set(`${point.stage_idx}:${point.step}`, point);
        this.lastStep.set(stage.idx, Math.max(this.lastStep.get(stage.idx) ?? -1, point.step));
        added += 1;
      }
      if (ended) this.complete.add(stage.idx);
    }
    return added;
  }

  names() {
    return [...this.series.keys()].sort(metricOrder);
  }

  points(name) {
    return [...this.series.get(name).values()].sort(
      (a, b) => a.stage_idx - b.stage_idx || a.step - b.step,
    );
  }
}

export function trainingSections(view, job) {
  const stagesHolder = h("div", {}, note("Loading stages…"));
  const legendHolder = h("div", {});
  const charts = h("div", { class: "chart-grid" });
  const metrics = new MetricStore(job.id);
  const samples = job.kind === "grpo" ? samplesSection(view, job) : null;
  const title = job.kind === "grpo" ? "PTST stages" : "Stage";
  const element = h(
    "div",
    {},
    section(title, stagesHolder),
    section("Metrics", legendHolder, charts),
    samples ? samples.element : null,
  );

  const refresh = async (_job, artifacts) => {
    const stages = await get(`/v1/jobs/${job.id}/stages`);
    const added = await metrics.update(stages);
    if (!view.alive) return;
    fill(
      stagesHolder,
      stages.length
        ? stageTable(stages, metrics.lastStep, artifacts)
        : note("No stage has started yet."),
    );
    if (stages.length > 1) fill(legendHolder, legend(stages));
    if (added || !charts.children.length) {
      const spans = stageSpans(stages);
      const names = metrics.names();
      fill(
        charts,
        ...(names.length
          ? names.map((name) =>
              metricChart(name, TITLES[name] ?? name, metrics.points(name), spans, {
                caps: WITH_CAPS.has(name),
              }),
            )
          : [note("No metrics yet.")]),
      );
    }
    if (samples) await samples.refresh(stages);
  };
  return { element, refresh };
}
