// The jobs list: newest first, filters and paging in the URL hash, live while it is shown.

import { call, get } from "./api.js";
import { badge, fill, h, note, table, when } from "./dom.js";
import { isActive } from "./live.js";
import { progressBar, progressStage } from "./progress.js";

const PAGE = 25;
const KINDS = ["coldstart", "sft", "grpo", "eval", "pipeline"];
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

function hashWith(query, changes) {
  const next = new URLSearchParams(query);
  for (const [name, value] of Object.entries(changes)) {
    if (value === "" || value === null || value === 0) next.delete(name);
    else next.set(name, String(value));
  }
  const text = next.toString();
  return `#/jobs${text ? `?${text}` : ""}`;
}

function select(name, label, options, value, query) {
  const element = h(
    "select",
    { name, "aria-label": label },
    h("option", { value: "" }, `All ${label}`),
    options.map((option) => h("option", { value: option, selected: option === value }, option)),
  );
  element.addEventListener("change", () => {
    location.hash = hashWith(query, { [name]: element.value, offset: 0 });
  });
  return element;
}

/** A Cancel button for an active job; asks first, then calls ``done``. */
export function cancelButton(job, done) {
  const button = h("button", { class: "button danger small", type: "button" }, "Cancel");
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!confirm(`Cancel job "${job.name}"? Its child jobs are cancelled too.`)) return;
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      await call(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      await done();
    } catch (error) {
      button.textContent = `Failed: ${error.message}`;
    }
  });
  return button;
}

function row(job, refresh) {
  const link = h("a", { href: `#/jobs/${job.id}` }, job.name || job.id);
  const tr = h(
    "tr",
    { class: "clickable", "data-job-id": job.id, "data-kind": job.kind },
    h("td", {}, link, job.parent_id ? h("span", { class: "muted small" }, " (child)") : null),
    h("td", {}, h("span", { class: "chip" }, job.kind)),
    h("td", {}, badge(job.status)),
    h("td", {}, progressBar(job)),
    h("td", { class: "muted" }, progressStage(job)),
    h("td", {}, when(job.created_at)),
    h("td", { class: "actions" }, isActive(job) ? cancelButton(job, refresh) : null),
  );
  tr.addEventListener("click", (event) => {
    if (!event.target.closest("a, button")) location.hash = `#/jobs/${job.id}`;
  });
  return tr;
}

export async function jobsPage(view, main, { query }) {
  const kind = query.get("kind") || "";
  const status = query.get("status") || "";
  const offset = Number(query.get("offset") || 0);
  const footer = h("div", { class: "pager" });
  const list = table("jobs", ["Name", "Kind", "Status", "Progress", "Stage", "Created", ""], []);
  const body = list.tBodies[0];
  const filters = h(
    "div",
    { class: "filters" },
    select("kind", "kinds", KINDS, kind, query),
    select("status", "statuses", STATUSES, status, query),
  );
  const content = h("div", {}, note("Loading jobs…"));
  let drawn = null;

  const refresh = async () => {
    const page = await get("/v1/jobs", { limit: PAGE, offset, kind, status });
    const key = JSON.stringify(page);
    if (!view.alive || key === drawn) return view.alive;
    drawn = key;
    fill(body, ...page.items.map((job) => row(job, refresh)));
    if (!page.items.length) {
      const filtered = kind || status;
      fill(content, note(filtered ? "No jobs match these filters." : "No jobs yet."));
    } else if (!content.contains(list)) {
      fill(content, list);
    }
    const last = offset + page.items.length;
    fill(
      footer,
      h("span", { class: "muted" }, page.total ? `${offset + 1}–${last} of ${page.total}` : ""),
      offset > 0
        ? h(
            "a",
            {
              class: "button small",
              href: hashWith(query, { offset: Math.max(0, offset - PAGE) }),
            },
            "← Newer",
          )
        : null,
      page.next_offset !== null
        ? h(
            "a",
            { class: "button small", href: hashWith(query, { offset: page.next_offset }) },
            "Older →",
          )
        : null,
    );
    return view.alive;
  };
  const start = h("a", { class: "button primary", href: "#/jobs/new" }, "New job");
  view.show(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), filters, start),
    content,
    footer,
  );
  // Polled while shown, active jobs or not: a job submitted elsewhere appears by itself.
  if (await refresh()) view.poll(refresh);
}
