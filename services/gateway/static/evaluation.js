// Eval jobs: accuracy per dataset from the job's output, then every item's completion,
// the answer read from it, and the verdict.

import { apiImage, get, pageOf } from "./api.js";
import { completion, fill, h, mark, note, num, numeric, pager, section, table } from "./dom.js";

const PAGE = 10;
const COLUMNS = {
  n: "Items",
  accuracy: "Accuracy",
  format_rate: "Format rate",
  missing_answer_rate: "Missing answer",
  resampled: "Resampled",
  mean_tries: "Mean tries",
};

function cell(key, value) {
  const rate = key.endsWith("rate") || key === "accuracy";
  const shown = typeof value === "number" && rate ? `${(100 * value).toFixed(1)}%` : num(value);
  return h("td", { class: "num" }, shown);
}

function accuracyTable(accuracy) {
  const rows = Object.entries(accuracy || {});
  if (!rows.length) return note("No accuracy yet: it is written when the job ends.");
  const seen = new Set(rows.flatMap(([, figures]) => Object.keys(figures)));
  const keys = [
    ...Object.keys(COLUMNS).filter((k) => seen.has(k)),
    ...[...seen].filter((k) => !(k in COLUMNS)).sort(),
  ];
  const head = [
    h("th", {}, "Dataset"),
    ...keys.map((k) => h("th", { class: "num" }, COLUMNS[k] ?? k)),
  ];
  const body = rows.map(([label, figures]) =>
    h(
      "tr",
      { "data-dataset": label },
      h("td", {}, label),
      keys.map((k) => cell(k, figures[k])),
    ),
  );
  return table("accuracy", head, body);
}

function resultRow(result) {
  return h(
    "tr",
    { "data-item-id": result.item_id },
    h(
      "td",
      {},
      (result.images || []).map((path) => apiImage(path, { alt: "item image" })),
    ),
    h("td", { class: "prompt" }, result.question ?? ""),
    h("td", { class: "wide" }, completion(result.completion)),
    h("td", {}, result.extracted ?? ""),
    h("td", {}, result.answer ?? ""),
    h(
      "td",
      { class: "verdict" },
      mark(result.correct),
      result.reason ? h("div", { class: "muted small" }, result.reason) : null,
    ),
    h("td", { class: "num" }, String(result.tries ?? "")),
  );
}

async function datasetNames(ids) {
  const named = await Promise.all(
    ids.map((id) =>
      get(`/v1/datasets/${id}`).then(
        (d) => [id, d.name],
        () => [id, id.slice(0, 8)],
      ),
    ),
  );
  return named;
}

function resultsBrowser(view, job) {
  const filters = { dataset_id: "", correct: "", offset: 0 };
  const datasetSelect = h(
    "select",
    { name: "dataset", "aria-label": "dataset" },
    h("option", { value: "" }, "All datasets"),
  );
  const correctSelect = h(
    "select",
    { name: "correct", "aria-label": "verdict" },
    h("option", { value: "" }, "All verdicts"),
    h("option", { value: "true" }, "Correct"),
    h("option", { value: "false" }, "Wrong"),
  );
  const body = h("div", {}, note("Loading results…"));
  let shown = null;
  const load = async () => {
    const params = { ...filters, limit: PAGE };
    const absent = "This server keeps no per-item results.";
    const { page, why } = await pageOf(`/v1/jobs/${job.id}/results`, params, absent);
    if (!view.alive) return;
    if (!page) {
      shown = null;
      fill(body, note(why));
      return;
    }
    const key = JSON.stringify([filters, page.total, page.items.map((r) => r.item_id)]);
    if (key === shown) return;
    shown = key;
    const head = [
      "Image",
      "Question",
      "Completion",
      "Extracted",
      "Gold",
      "Correct",
      numeric("Tries"),
    ];
    fill(
      body,
      page.items.length
        ? table("results", head, page.items.map(resultRow))
        : note("No results match."),
      pager(page, (offset) => {
        filters.offset = offset;
        load();
      }),
    );
  };
  for (const select of [datasetSelect, correctSelect]) {
    select.addEventListener("change", () => {
      Object.assign(filters, {
        dataset_id: datasetSelect.value,
        correct: correctSelect.value,
        offset: 0,
      });
      load();
    });
  }
  datasetNames(job.spec?.dataset_ids ?? []).then((named) => {
    for (const [id, name] of named) datasetSelect.append(h("option", { value: id }, name));
  });
  const element = section(
    "Per-item results",
    h("div", { class: "filters" }, datasetSelect, correctSelect),
    body,
  );
  return { element, load };
}

export function evalSections(view, job) {
  const summary = h("div", {}, note("Loading…"));
  const results = resultsBrowser(view, job);
  const element = h("div", {}, section("Accuracy", summary), results.element);
  const refresh = async (current) => {
    fill(summary, accuracyTable(current.output?.accuracy));
    await results.load();
  };
  return { element, refresh };
}
