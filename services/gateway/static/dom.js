// Building elements without innerHTML: every string from the API lands as a text node.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/** Append children: nodes as they are, strings and numbers as text, arrays flattened. */
function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("a", {href: "#/jobs", class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

// --- formatting -----------------------------------------------------------------------

const numbers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

export function num(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-2 || abs >= 1e6)) return Number(value).toExponential(2);
  return numbers.format(value);
}

export function pct(part, whole) {
  if (!whole) return "—";
  return `${((100 * part) / whole).toFixed(1)}%`;
}

export function bytes(size) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function secondsBetween(start, end) {
  if (!start) return null;
  const until = end ? new Date(end) : new Date();
  return (until - new Date(start)) / 1000;
}

function ago(iso) {
  const seconds = (Date.now() - new Date(iso)) / 1000;
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 36) return `${hours} h ago`;
  return `${Math.round(hours / 24)} days ago`;
}

/** A relative age ("3 min ago") with the exact time as its tooltip; kept fresh. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const exact = new Date(iso).toLocaleString();
  return h("time", { datetime: iso, title: exact, "data-ago": "" }, ago(iso));
}

setInterval(() => {
  for (const element of document.querySelectorAll("time[data-ago]")) {
    element.textContent = ago(element.getAttribute("datetime"));
  }
}, 30_000);

export function badge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

/** A progress bar; ``total`` 0 or unknown shows an empty bar with a dash. */
export function progress(done, total, label) {
  const known = total > 0;
  const share = known ? Math.min(1, done / total) : 0;
  return h(
    "div",
    { class: "progress", title: known ? pct(done, total) : "not known yet" },
    h("div", { class: "progress-bar" }, h("div", { style: `width:${(100 * share).toFixed(1)}%` })),
    h("span", { class: "progress-text num" }, label ?? (known ? `${done}/${total}` : "—")),
  );
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

/** A card of the page: a heading, then its content. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function note(text, kind = "muted") {
  return h("p", { class: `note ${kind}` }, text);
}

/** A model's output, monospace and wrapped, its <think>/<answer> tags marked. */
export function completion(text) {
  const block = h("pre", { class: "completion" });
  for (const part of String(text ?? "").split(/(<\/?(?:think|answer)>)/)) {
    if (!part) continue;
    block.append(/^<\/?(think|answer)>$/.test(part) ? h("span", { class: "tag" }, part) : part);
  }
  return block;
}

/** "11–20 of 64" with previous/next buttons; ``go(offset)`` shows another page. */
export function pager(page, go) {
  if (!page.total) return null;
  const last = page.offset + page.items.length;
  const previous = h("button", { class: "button small", type: "button" }, "← Previous");
  const next = h("button", { class: "button small", type: "button" }, "Next →");
  previous.disabled = page.offset === 0;
  next.disabled = page.next_offset === null;
  previous.addEventListener("click", () => go(Math.max(0, page.offset - page.limit)));
  next.addEventListener("click", () => go(page.next_offset));
  const range = `${page.offset + 1}–${last} of ${page.total}`;
  return h("div", { class: "pager" }, h("span", { class: "muted" }, range), previous, next);
}

export function mark(value) {
  if (value === true) return h("span", { class: "yes", title: "yes" }, "✓");
  if (value === false) return h("span", { class: "no", title: "no" }, "✗");
  return h("span", { class: "muted" }, "—");
}

/** A heading of a column of numbers (right-aligned like them). */
export function numeric(text) {
  return h("th", { class: "num" }, text);
}

/** A table: headings (text, or <th> elements) and body rows. */
export function table(className, headings, rows) {
  const head = headings.map((t) => (typeof t === "string" ? h("th", {}, t) : t));
  return h(
    "table",
    { class: `table ${className}` },
    h("thead", {}, h("tr", {}, head)),
    h("tbody", {}, rows),
  );
}
