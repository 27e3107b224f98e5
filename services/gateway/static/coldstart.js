// Coldstart jobs: the funnel (items in → … → kept, with why the others stopped) and a
// browser over every item's generated texts and verdict.

import { apiImage, optional, pageOf } from "./api.js";
import { badge, completion, fill, h, mark, note, pager, pct, section } from "./dom.js";

const FUNNEL = [
  ["items_in", "Items in"],
  ["captioned", "Captioned (Pseudo-CoT)"],
  ["described", "Described"],
  ["reasoned", "Reasoned"],
  ["verified", "Verified"],
  ["kept", "Kept"],
];
const RECORD_STATUSES = ["pending", "kept", "rejected", "failed"];
const PAGE = 10;

function reasonTable(title, counts) {
  const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  if (!rows.length) return null;
  return h(
    "div",
    { class: "reasons" },
    h("h3", {}, title),
    h(
      "table",
      { class: "table compact" },
      h(
        "tbody",
        {},
        rows.map(([reason, n]) =>
          h("tr", {}, h("td", {}, reason || "(none)"), h("td", { class: "num" }, String(n))),
        ),
      ),
    ),
  );
}

function funnelView(funnel, job) {
  const total = funnel.items_in || job.items_total || 0;
  const bars = FUNNEL.map(([key, label]) => {
    const count = funnel[key] ?? 0;
    const width = total ? (100 * count) / total : 0;
    return h(
      "div",
      { class: "funnel-row", "data-step": key },
      h("span", { class: "funnel-label" }, label),
      h(
        "div",
        { class: "funnel-track" },
        h("div", { class: "funnel-bar", style: `width:${width.toFixed(1)}%` }),
      ),
      h("span", { class: "count num" }, String(count)),
      h("span", { class: "share num muted" }, pct(count, total)),
    );
  });
  return h(
    "div",
    { class: "funnel-wrap" },
    h("div", { class: "funnel" }, bars),
    h(
      "div",
      { class: "funnel-side" },
      funnel.pending ? h("p", { class: "muted" }, `Not settled yet: ${funnel.pending}`) : null,
      reasonTable("Rejected, by reason", funnel.rejected),
      reasonTable("Failed, by reason", funnel.failed),
      reasonTable("Errors", funnel.errors),
      h(
        "p",
        { class: "muted", "data-failed": job.items_failed },
        `Failed items: ${job.items_failed}`,
      ),
    ),
  );
}

function field(label, value, asCode = false) {
  if (value === null || value === undefined || value === "") return null;
  return h(
    "div",
    { class: "field" },
    h("div", { class: "field-label" }, label),
    asCode ? completion(value) : h("div", {}, value),
  );
}

function recordCard(record) {
  const reason = record.reject_reason ?? record.reason;
  return h(
    "article",
    { class: "record", "data-record-status": record.status },
    h(
      "div",
      { class: "record-images" },
      (record.images || []).map((path) =>
        apiImage(path, { alt: "item image", className: "record-image" }),
      ),
    ),
    h(
      "div",
      { class: "record-body" },
      h(
        "div",
        { class: "record-head" },
        badge(record.status),
        reason ? h("span", { class: "chip" }, reason) : null,
        h("span", { class: "muted" }, " verified "),
        mark(record.verdict),
        record.step ? h("span", { class: "muted small" }, ` reached: ${record.step}`) : null,
      ),
      record.error ? h("pre", { class: "error-box" }, record.error) : null,
      field("Question", record.question),
      field("Gold answer", record.answer),
      field("Pseudo-CoT", record.pseudo_cot, true),
      field("Description", record.description, true),
      field("CoT", record.reasoning, true),
      field("Answer", record.final_answer),
    ),
  );
}

function recordBrowser(view, job) {
  const filters = { status: "", reason: "", offset: 0 };
  const statusSelect = h(
    "select",
    { name: "status", "aria-label": "status" },
    h("option", { value: "" }, "All statuses"),
    RECORD_STATUSES.map((s) => h("option", { value: s }, s)),
  );
  const reasonSelect = h(
    "select",
    { name: "reason", "aria-label": "reason" },
    h("option", { value: "" }, "All reasons"),
  );
  const body = h("div", {}, note("Loading items…"));
  let shown = null;

  const load = async () => {
    const params = { ...filters, limit: PAGE };
    const absent = "This server keeps no per-item records.";
    const { page, why } = await pageOf(`/v1/jobs/${job.id}/records`, params, absent);
    if (!view.alive) return;
    if (!page) {
      shown = null;
      fill(body, note(why));
      return;
    }
    const key = JSON.stringify([
      filters,
      page.total,
      page.items.map((r) => [r.item_id, r.status, r.step]),
    ]);
    if (key === shown) return;
    shown = key;
    fill(
      body,
      page.items.length
        ? h("div", { class: "records" }, page.items.map(recordCard))
        : note("No items match."),
      pager(page, (offset) => {
        filters.offset = offset;
        load();
      }),
    );
  };
  for (const select of [statusSelect, reasonSelect]) {
    select.addEventListener("change", () => {
      Object.assign(filters, { status: statusSelect.value, reason: reasonSelect.value, offset: 0 });
      load();
    });
  }
  const setReasons = (funnel) => {
    const reasons = [
      ...new Set([...Object.keys(funnel.rejected || {}), ...Object.keys(funnel.failed || {})]),
    ].filter(Boolean);
    if (reasonSelect.options.length === reasons.length + 1) return;
    fill(
      reasonSelect,
      h("option", { value: "" }, "All reasons"),
      reasons.map((r) => h("option", { value: r, selected: r === filters.reason }, r)),
    );
  };
  const element = section(
    "Items",
    h("div", { class: "filters" }, statusSelect, reasonSelect),
    body,
  );
  return { element, load, setReasons };
}

export function coldstartSections(view, job) {
  const funnelHolder = h("div", {}, note("Loading funnel…"));
  const records = recordBrowser(view, job);
  const element = h("div", {}, section("Funnel", funnelHolder), records.element);
  const refresh = async (current) => {
    const funnel =
      (await optional(`/v1/jobs/${job.id}/funnel`)) ?? current.output?.funnel ?? current.counters;
    if (!view.alive) return;
    if (funnel && (funnel.items_in !== undefined || current.items_total)) {
      fill(funnelHolder, funnelView(funnel, current));
      records.setReasons(funnel);
    } else {
      fill(funnelHolder, note("No funnel yet."));
    }
    await records.load();
  };
  return { element, refresh };
}
