// Datasets: the team's list with an upload form, and one dataset's items with their images.

import { ApiError, apiImage, get, upload } from "./api.js";
import {
  bytes,
  fill,
  h,
  note,
  numeric,
  pager,
  progress,
  section,
  shortId,
  table,
  when,
} from "./dom.js";

const PAGE = 25;
const ITEMS_PAGE = 20;

function producedBy(dataset) {
  const job = dataset.produced_by_job_id;
  return job
    ? h("a", { href: `#/jobs/${job}` }, `job ${shortId(job)}`)
    : h("span", { class: "muted" }, "registered");
}

const ACCEPTED = ".jsonl,.json,.parquet,.tar,.tar.gz,.tgz,.zip";

/** The file name without its data or archive extension: the dataset's default name. */
function stem(file) {
  return file.name.replace(/\.(jsonl|json|parquet|tar\.gz|tgz|tar|zip)$/i, "");
}

/** A bad row as the API reports it (a skipped one, or one that refused a file). */
function rowError(row) {
  return `row ${row.row}${row.field ? ` (${row.field})` : ""}: ${row.reason}`;
}

function skippedNote(dataset) {
  const skipped = dataset.skipped || [];
  if (!skipped.length) return null;
  const first = skipped.slice(0, 5).map(rowError).join("; ");
  return note(`${skipped.length} rows skipped (${first})`, "warn");
}

/** The upload form: a file (JSONL, Parquet, or an archive with its images) streamed to the
 * gateway, validated row by row there; the new dataset's page follows. */
function uploadForm() {
  const file = h("input", { type: "file", name: "file", accept: ACCEPTED, required: true });
  const name = h("input", { name: "name", "aria-label": "name", placeholder: "name", required: true });
  const kind = h(
    "select",
    { name: "kind", "aria-label": "kind" },
    ["source", "rl", "eval"].map((k) => h("option", { value: k }, k)),
  );
  const onError = h(
    "select",
    { name: "on_error", "aria-label": "on bad rows" },
    h("option", { value: "reject" }, "a bad row rejects the file"),
    h("option", { value: "skip" }, "skip bad rows"),
  );
  const status = h("div", { class: "upload-status" });
  const submit = h("button", { type: "submit", class: "button primary" }, "Upload");
  file.addEventListener("change", () => {
    fill(status); // what was said of the last file is not about this one
    if (file.files[0] && !name.value) name.value = stem(file.files[0]);
  });
  const form = h(
    "form",
    { class: "upload-form" },
    h("div", { class: "filters" }, file, name, kind, onError, submit),
    note(
      "JSONL or Parquet (image paths relative to the file, or embedded bytes as Hugging Face " +
        "datasets writes them), or a .tar/.tar.gz/.zip holding the file and its images. " +
        "Columns image, question and answer.",
    ),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    // The fields first: the gateway checks them before it stores any of the file.
    const body = new FormData();
    body.append("name", name.value.trim());
    body.append("kind", kind.value);
    body.append("on_error", onError.value);
    body.append("file", chosen);
    submit.disabled = true;
    fill(status, progress(0, chosen.size, `0 of ${bytes(chosen.size)}`));
    try {
      const dataset = await upload("/v1/datasets", body, (sent, total) => {
        const label = sent < total ? `${bytes(sent)} of ${bytes(total)}` : "checking the rows…";
        fill(status, progress(sent, total, label));
      });
      fill(status, note(`Uploaded ${dataset.name}: ${dataset.size} items.`), skippedNote(dataset));
      location.hash = `#/datasets/${dataset.id}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      const rows = (error.body?.errors || []).map(rowError);
      fill(status, h("pre", { class: "error-box", role: "alert" }, [error.message, ...rows].join("\n")));
    } finally {
      submit.disabled = false;
    }
  });
  return h(
    "details",
    { class: "card upload" },
    h("summary", {}, "Upload a dataset"),
    form,
  );
}

export async function datasetsPage(view, main, { query }) {
  const offset = Number(query.get("offset") || 0);
  const page = await get("/v1/datasets", { limit: PAGE, offset });
  const rows = page.items.map((dataset) =>
    h(
      "tr",
      { "data-dataset-id": dataset.id },
      h("td", {}, h("a", { href: `#/datasets/${dataset.id}` }, dataset.name)),
      h("td", {}, h("span", { class: "chip" }, dataset.kind)),
      h("td", {}, dataset.format),
      h("td", { class: "num" }, String(dataset.size)),
      h("td", {}, producedBy(dataset)),
      h("td", {}, when(dataset.created_at)),
    ),
  );
  const list = table(
    "datasets",
    ["Name", "Kind", "Format", numeric("Items"), "Produced by", "Created"],
    rows,
  );
  view.show(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Datasets")),
    uploadForm(),
    page.items.length ? list : note("No datasets yet."),
    pager(page, (next) => {
      location.hash = next ? `#/datasets?offset=${next}` : "#/datasets";
    }),
  );
}

function itemRow(item) {
  const images = item.images.map((_, n) =>
    apiImage(`/v1/items/${item.id}/images/${n}`, { alt: `image ${n + 1}` }),
  );
  return h(
    "tr",
    { "data-item-id": item.id },
    h("td", { class: "num" }, String(item.idx)),
    h("td", {}, images),
    h("td", { class: "prompt" }, item.question),
    h("td", {}, item.answer),
  );
}

export async function datasetPage(view, main, { args: [id] }) {
  const dataset = await get(`/v1/datasets/${id}`);
  const items = h("div", {}, note("Loading items…"));
  const load = async (offset) => {
    const page = await get(`/v1/datasets/${id}/items`, { limit: ITEMS_PAGE, offset });
    if (!view.alive) return;
    fill(
      items,
      table("items", [numeric("#"), "Image", "Question", "Answer"], page.items.map(itemRow)),
      pager(page, load),
    );
  };
  const facts = [
    ["Kind", h("span", { class: "chip" }, dataset.kind)],
    ["Format", dataset.format],
    ["Items", String(dataset.size)],
    ["Produced by", producedBy(dataset)],
    ["Created", when(dataset.created_at)],
    ["ID", h("code", {}, dataset.id)],
  ];
  view.show(
    main,
    h("div", { class: "page-head" }, h("h1", {}, dataset.name)),
    h(
      "dl",
      { class: "facts" },
      facts.map(([label, value]) =>
        h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value)),
      ),
    ),
    section("Items", items),
  );
  await load(0);
}
