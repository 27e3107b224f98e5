// The rollouts a GRPO run kept: image, prompt, completion, gold answer, reward and why.

import { apiImage, pageOf } from "./api.js";
import { completion, fill, h, mark, note, num, numeric, pager, section, table } from "./dom.js";

const PAGE = 10;

function sampleRow(sample) {
  return h(
    "tr",
    { "data-sample-id": sample.id },
    h("td", { class: "num" }, `${sample.stage_idx + 1} / ${sample.step}`),
    h(
      "td",
      {},
      sample.images.map((path) => apiImage(path, { alt: "prompt image" })),
    ),
    h("td", { class: "prompt" }, sample.prompt),
    h("td", { class: "wide" }, completion(sample.completion)),
    h("td", {}, sample.answer),
    h("td", { class: "num" }, num(sample.reward)),
    h(
      "td",
      { class: "verdict" },
      h("div", {}, mark(sample.correct), " answer"),
      h("div", {}, mark(sample.well_formed), " format"),
      sample.reason ? h("div", { class: "muted small" }, sample.reason) : null,
    ),
  );
}

export function samplesSection(view, job) {
  const filters = { stage: "", step: "", offset: 0 };
  const stageSelect = h(
    "select",
    { name: "stage", "aria-label": "stage" },
    h("option", { value: "" }, "All stages"),
  );
  const stepInput = h("input", {
    type: "number",
    min: 0,
    name: "step",
    placeholder: "step",
    "aria-label": "step",
  });
  const body = h("div", {}, note("Loading samples…"));
  const form = h(
    "form",
    { class: "filters" },
    stageSelect,
    stepInput,
    h("button", { class: "button small", type: "submit" }, "Show"),
  );
  let shown = null;

  const load = async () => {
    const params = { ...filters, limit: PAGE };
    const absent = "This server keeps no rollout samples.";
    const { page, why } = await pageOf(`/v1/jobs/${job.id}/samples`, params, absent);
    if (!view.alive) return;
    if (!page) {
      shown = null;
      fill(body, note(why));
      return;
    }
    const key = JSON.stringify([filters, page.total, page.items.map((s) => s.id)]);
    if (key === shown) return;
    shown = key;
    if (!page.items.length) {
      fill(body, note("No samples for these filters yet."));
      return;
    }
    const head = [
      numeric("Stage / step"),
      "Image",
      "Prompt",
      "Completion",
      "Gold",
      numeric("Reward"),
      "Verdict",
    ];
    fill(
      body,
      table("samples", head, page.items.map(sampleRow)),
      pager(page, (offset) => {
        filters.offset = offset;
        load();
      }),
    );
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(filters, { stage: stageSelect.value, step: stepInput.value, offset: 0 });
    load();
  });

  const refresh = async (stages) => {
    if (stages && stageSelect.options.length !== stages.length + 1) {
      fill(
        stageSelect,
        h("option", { value: "" }, "All stages"),
        stages.map((stage) =>
          h(
            "option",
            { value: stage.idx, selected: String(stage.idx) === filters.stage },
            stage.name,
          ),
        ),
      );
    }
    await load();
  };
  return { element: section("Sample rollouts", form, body), refresh };
}
