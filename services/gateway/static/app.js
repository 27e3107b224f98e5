// The dashboard's entry: hash routes (#/jobs, #/jobs/new, #/jobs/<id>, #/datasets,
// #/datasets/<id>).

import { ApiError, apiKey, logOut } from "./api.js";
import { datasetPage, datasetsPage } from "./datasets.js";
import { h, note } from "./dom.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { View } from "./live.js";
import { loginPage } from "./login.js";
import { newJobPage } from "./newjob.js";

const ROUTES = [
  [/^\/login$/, loginPage],
  [/^\/jobs$/, jobsPage],
  [/^\/jobs\/new$/, newJobPage],
  [/^\/jobs\/([\w-]+)$/, jobPage],
  [/^\/datasets$/, datasetsPage],
  [/^\/datasets\/([\w-]+)$/, datasetPage],
];

let current = null;
let shownPath = null;

function parse() {
  const raw = location.hash.slice(1) || "/jobs";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

function showNav(path) {
  const nav = document.getElementById("nav");
  nav.hidden = path === "/login";
  for (const link of nav.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", path.startsWith(`/${link.dataset.nav}`));
  }
}

function notFound(what) {
  return h(
    "div",
    { class: "empty-page" },
    h("h1", {}, `${what} not found`),
    note("It does not exist, or it belongs to another team."),
    h("a", { href: "#/jobs" }, "Back to jobs"),
  );
}

async function route() {
  current?.dispose();
  const view = new View();
  current = view;
  const { path, query } = parse();
  const main = document.getElementById("main");
  if (path !== "/login" && !apiKey()) {
    location.hash = `#/login?next=${encodeURIComponent(location.hash || "#/jobs")}`;
    return;
  }
  showNav(path);
  if (path !== shownPath) window.scrollTo(0, 0);
  shownPath = path;
  const found = ROUTES.map(([pattern, page]) => [pattern.exec(path), page]).find(([m]) => m);
  if (!found) {
    view.show(main, notFound("Page"));
    return;
  }
  const [match, page] = found;
  try {
    await page(view, main, { args: match.slice(1), query });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // on its way to login
    if (error instanceof ApiError && error.status === 404) {
      view.show(main, notFound(path.startsWith("/datasets") ? "Dataset" : "Job"));
      return;
    }
    console.error(error);
    view.show(main, h("div", { class: "error-box" }, `Could not load this page: ${error.message}`));
  }
}

document.getElementById("logout").addEventListener("click", () => logOut());
window.addEventListener("hashchange", route);
route();
