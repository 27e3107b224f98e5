// A job's page: the header every kind shares, the kind's own sections, artifacts and the
// event log; refreshed while the job is active, then once more when it ends.

import { downloadButton, get, optional } from "./api.js";
import { coldstartSections } from "./coldstart.js";
import {
  badge,
  bytes,
  duration,
  fill,
  h,
  note,
  numeric,
  secondsBetween,
  section,
  shortId,
  table,
  when,
} from "./dom.js";
import { evalSections } from "./evaluation.js";
import { cancelButton } from "./jobs.js";
import { isActive } from "./live.js";
import { pipelineSections } from "./pipeline.js";
import { trainingSections } from "./training.js";

const SECTIONS = {
  coldstart: coldstartSections,
  sft: trainingSections,
  grpo: trainingSections,
  eval: evalSections,
  pipeline: pipelineSections,
};

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value));
}

function header(job, refresh) {
  const took = secondsBetween(job.started_at, job.finished_at);
  return h(
    "div",
    { class: "job-head" },
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, job.name || shortId(job.id)),
      h("span", { class: "chip" }, job.kind),
      badge(job.status),
      h("span", { class: "spacer" }),
      h("a", { class: "button small", href: `#/jobs/new?from=${job.id}` }, "Run again…"),
      isActive(job) ? cancelButton(job, refresh) : null,
    ),
    h(
      "dl",
      { class: "facts" },
      fact("ID", h("code", {}, job.id)),
      fact("Created", when(job.created_at)),
      fact("Started", when(job.started_at)),
      fact("Finished", when(job.finished_at)),
      fact("Duration", job.started_at ? duration(took) : "—"),
      job.parent_id
        ? fact(
            "Part of",
            h("a", { href: `#/jobs/${job.parent_id}` }, `pipeline ${shortId(job.parent_id)}`),
          )
        : null,
    ),
    job.error ? h("pre", { class: "error-box" }, job.error) : null,
    job.warnings.length
      ? h(
          "ul",
          { class: "warnings" },
          job.warnings.map((w) => h("li", {}, w)),
        )
      : null,
    job.cancel_requested && isActive(job)
      ? note("Cancellation requested; stopping…", "warn")
      : null,
  );
}

export function artifactTable(artifacts) {
  if (!artifacts.length) return note("Nothing stored yet.");
  const rows = artifacts.map((artifact) =>
    h(
      "tr",
      { "data-artifact-id": artifact.id },
      h("td", {}, artifact.name),
      h("td", {}, h("span", { class: "chip" }, artifact.kind)),
      h("td", { class: "num" }, bytes(artifact.size_bytes)),
      h("td", {}, when(artifact.created_at)),
      h("td", { class: "actions" }, downloadButton(artifact)),
    ),
  );
  return table("artifacts", ["Name", "Kind", numeric("Size"), "Created", ""], rows);
}

/** The event log, oldest first, following new events through the ``after`` cursor. */
function eventLog(job) {
  const list = h("ol", { class: "events" });
  const box = h("div", { class: "event-box" }, list);
  const holder = h("div", {}, box);
  let last = null;
  let missing = false;
  const fetchNew = async () => {
    if (missing) return;
    for (;;) {
      const page = await optional(`/v1/jobs/${job.id}/events`, { after: last, limit: 200 });
      if (page === null) {
        missing = true;
        fill(holder, note("This server keeps no event log."));
        return;
      }
      const following = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
      for (const event of page.items) {
        const time = new Date(event.created_at);
        list.append(
          h(
            "li",
            { class: `event level-${event.level}`, "data-event-id": event.id },
            h(
              "time",
              { datetime: event.created_at, title: time.toLocaleString() },
              time.toLocaleTimeString(),
            ),
            h("span", { class: "event-type" }, event.type),
            event.stage_idx !== null && event.stage_idx !== undefined
              ? h("span", { class: "chip" }, `stage ${event.stage_idx + 1}`)
              : null,
            h("span", { class: "event-message" }, event.message),
          ),
        );
        last = event.id;
      }
      if (!list.children.length) fill(list, h("li", { class: "muted" }, "No events yet."));
      else list.querySelector("li.muted")?.remove();
      if (following) box.scrollTop = box.scrollHeight;
      if (page.items.length < 200) return;
    }
  };
  return { element: holder, refresh: fetchNew };
}

function artifactSection(job) {
  const holder = h("div", {}, note("Loading…"));
  let seen = null;
  const refresh = async () => {
    const artifacts = await get(`/v1/jobs/${job.id}/artifacts`);
    const key = artifacts.map((a) => a.id).join();
    if (key !== seen) fill(holder, artifactTable(artifacts));
    seen = key;
    return artifacts;
  };
  return { element: holder, refresh };
}

export async function jobPage(view, main, { args: [id] }) {
  let job = await get(`/v1/jobs/${id}`);
  const head = h("div", {});
  const artifacts = artifactSection(job);
  const events = eventLog(job);
  const kind = (SECTIONS[job.kind] ?? (() => ({ element: null, refresh: async () => {} })))(
    view,
    job,
  );
  const refresh = async () => {
    job = await get(`/v1/jobs/${id}`);
    fill(head, header(job, refresh));
    const stored = await artifacts.refresh();
    await Promise.all([kind.refresh(job, stored), events.refresh()]);
    return isActive(job);
  };
  fill(head, header(job, refresh));
  const spec = h("pre", { class: "completion" }, JSON.stringify(job.spec, null, 2));
  view.show(
    main,
    head,
    h("details", { class: "card spec" }, h("summary", {}, "Spec"), spec),
    kind.element,
    section("Artifacts", artifacts.element),
    section("Event log", events.element),
  );
  const stored = await artifacts.refresh();
  await Promise.all([kind.refresh(job, stored), events.refresh()]);
  if (isActive(job)) view.poll(refresh); // its last tick shows the job's final state
}
