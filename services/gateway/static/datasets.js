// Datasets: the team's list, and one dataset's items with their images.

import { apiImage, get } from "./api.js";
import { fill, h, note, numeric, pager, section, shortId, table, when } from "./dom.js";

const PAGE = 25;
const ITEMS_PAGE = 20;

function producedBy(dataset) {
  const job = dataset.produced_by_job_id;
  return job
    ? h("a", { href: `#/jobs/${job}` }, `job ${shortId(job)}`)
    : h("span", { class: "muted" }, "registered");
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
