// Pipeline jobs: coldstart → sft → grpo → eval as connected cards, each linking to its job.

import { get } from "./api.js";
import { badge, fill, h, note, section } from "./dom.js";
import { progressBar, progressStage } from "./progress.js";

const ORDER = ["coldstart", "sft", "grpo", "eval"];

function card(kind, child) {
  if (!child) {
    return h(
      "div",
      { class: "step-card waiting", "data-kind": kind },
      h("div", { class: "step-kind" }, kind),
      h("p", { class: "muted" }, "not started"),
    );
  }
  const stage = progressStage(child);
  return h(
    "a",
    { class: "step-card", href: `#/jobs/${child.id}`, "data-kind": kind, "data-job-id": child.id },
    h("div", { class: "step-kind" }, kind),
    h("div", { class: "step-name" }, child.name),
    badge(child.status),
    progressBar(child),
    stage ? h("div", { class: "muted small" }, stage) : null,
  );
}

export function pipelineSections(view, job) {
  const chain = h("div", { class: "chain" }, note("Loading steps…"));
  const refresh = async (current) => {
    const children = (await get("/v1/jobs", { parent_id: job.id, limit: 50 })).items;
    const byKind = new Map(children.map((child) => [child.kind, child]));
    // The pipeline's progress counts its planned children: eval comes last, when planned.
    const steps = ORDER.slice(0, current.progress.total ?? ORDER.length);
    if (!view.alive) return;
    const cards = steps.flatMap((kind, i) => [
      i ? h("div", { class: "arrow", "aria-hidden": "true" }, "→") : null,
      card(kind, byKind.get(kind)),
    ]);
    fill(chain, ...cards.filter(Boolean));
  };
  return { element: section("Steps", chain), refresh };
}
