// Line charts over a training job's global step, drawn as inline SVG.
//
// A PTST job restarts its step counter in every stage; the x axis here is the global step
// (stage k's steps offset by the planned steps of the stages before it), each stage drawn
// in its own colour, a dashed line where one stage ends and the next begins, and — on
// completion-length charts — each stage's cap as a horizontal line over its span.

import { h, num, s } from "./dom.js";

const STAGE_COLOURS = ["#2f6fb0", "#d9822b", "#3d9970", "#a8509b", "#c0392b", "#7f8c8d"];
const W = 460;
const H = 210;
const M = { left: 50, right: 14, top: 14, bottom: 30 };
const RATES = new Set([
  "accuracy",
  "format_rate",
  "truncated_frac",
  "consistency",
  "is_clipped_frac",
]);

export function stageColour(idx) {
  return STAGE_COLOURS[idx % STAGE_COLOURS.length];
}

/** Where each stage sits on the global step axis: {idx → {offset, steps}}. */
export function stageSpans(stages) {
  const spans = new Map();
  let offset = 0;
  for (const stage of [...stages].sort((a, b) => a.idx - b.idx)) {
    const steps = plannedSteps(stage);
    spans.set(stage.idx, { offset, steps, cap: stage.config?.max_completion_tokens ?? null });
    offset += steps;
  }
  return spans;
}

export function plannedSteps(stage) {
  const config = stage.config || {};
  return config.steps ?? config.max_steps ?? stage.summary?.steps ?? 0;
}

function niceStep(range, count) {
  const raw = range / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw) ?? 10;
  return unit * power;
}

function ticks(lo, hi, count, integers = false) {
  let step = niceStep(hi - lo || 1, count);
  if (integers) step = Math.max(1, Math.round(step));
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/** A tick's label with as many decimals as its neighbours need to differ (a ratio that
 * moves around 1.0001 is not labelled "1, 1, 1"); very small or large values as num does. */
function tickLabel(v, all) {
  const step = all.length > 1 ? Math.abs(all[1] - all[0]) : 0;
  const size = Math.max(...all.map(Math.abs));
  if (!step || size >= 1e4 || size < 1e-2) return num(v);
  let decimals = 0; // those of the step itself: 0.25 needs two, 20 none
  const fraction = (d) => Math.abs(step * 10 ** d - Math.round(step * 10 ** d));
  while (decimals < 8 && fraction(decimals) > 1e-6) decimals += 1;
  return v.toFixed(decimals);
}

function yDomain(name, values) {
  if (RATES.has(name)) return [0, 1];
  let lo = Math.min(...values);
  const hi = Math.max(...values);
  // Lengths start at zero (their caps are read against it), as does any series far from it.
  if (lo >= 0 && (name.startsWith("completion_len") || lo < 0.5 * hi)) lo = 0;
  if (hi === lo) {
    const pad = Math.abs(hi) * 0.1 || 1;
    return [lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.08;
  return [lo === 0 ? 0 : lo - pad, hi + pad];
}

/**
 * One metric as a chart element.
 * points: [{stage_idx, step, value}], spans: from stageSpans, caps: draw the stage caps.
 */
export function metricChart(name, title, points, spans, { caps = false } = {}) {
  const body = h("div", { class: "chart-body" });
  const latest = points.length ? points[points.length - 1].value : null;
  const card = h(
    "figure",
    { class: "chart", "data-metric": name },
    h("figcaption", {}, h("span", {}, title), h("span", { class: "num muted" }, num(latest))),
    body,
  );
  if (!points.length) {
    body.append(h("p", { class: "note muted" }, "no points yet"));
    return card;
  }
  const placed = points.map((p) => ({ ...p, x: (spans.get(p.stage_idx)?.offset ?? 0) + p.step }));
  const capLines = caps
    ? [...spans.entries()]
        .filter(([, span]) => span.cap && span.steps)
        .map(([idx, span]) => ({ idx, ...span }))
    : [];
  const planned = Math.max(0, ...[...spans.values()].map((span) => span.offset + span.steps));
  const xMax = Math.max(planned, ...placed.map((p) => p.x));
  const [y0, y1] = yDomain(name, [...placed.map((p) => p.value), ...capLines.map((c) => c.cap)]);
  const x = (v) => M.left + ((v - 0.5) / Math.max(1, xMax)) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - ((v - y0) / (y1 - y0)) * (H - M.top - M.bottom);

  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart-svg",
    role: "img",
    "aria-label": `${title} by global step`,
  });
  const grid = s("g", { class: "axis" });
  const yTicks = ticks(y0, y1, 4);
  for (const v of yTicks) {
    grid.append(
      s("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "gridline" }),
      s("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, tickLabel(v, yTicks)),
    );
  }
  for (const v of ticks(1, xMax, 6, true)) {
    grid.append(s("text", { x: x(v), y: H - M.bottom + 16, "text-anchor": "middle" }, String(v)));
  }
  grid.append(
    s("line", {
      x1: M.left,
      x2: W - M.right,
      y1: H - M.bottom,
      y2: H - M.bottom,
      class: "baseline",
    }),
    s(
      "text",
      { x: W - M.right, y: H - 3, "text-anchor": "end", class: "axis-label" },
      "global step",
    ),
  );
  svg.append(grid);

  for (const [idx, span] of spans) {
    if (span.offset > 0 && span.offset < xMax) {
      svg.append(
        s("line", {
          class: "boundary",
          "data-stage": idx,
          x1: x(span.offset + 0.5),
          x2: x(span.offset + 0.5),
          y1: M.top,
          y2: H - M.bottom,
        }),
      );
    }
  }
  for (const cap of capLines) {
    const x1 = x(cap.offset + 0.5);
    const x2 = x(cap.offset + cap.steps + 0.5);
    svg.append(
      s("line", {
        class: "cap",
        "data-stage": cap.idx,
        x1,
        x2,
        y1: y(cap.cap),
        y2: y(cap.cap),
        stroke: stageColour(cap.idx),
      }),
      s(
        "text",
        {
          class: "cap-label",
          x: x2 - 3,
          y: y(cap.cap) - 4,
          "text-anchor": "end",
          fill: stageColour(cap.idx),
        },
        `cap ${cap.cap}`,
      ),
    );
  }

  const byStage = Map.groupBy(placed, (p) => p.stage_idx ?? 0);
  for (const [idx, series] of byStage) {
    series.sort((a, b) => a.x - b.x);
    const colour = stageColour(idx);
    svg.append(
      s("polyline", {
        class: "series",
        "data-stage": idx,
        points: series.map((p) => `${x(p.x).toFixed(1)},${y(p.value).toFixed(1)}`).join(" "),
        stroke: colour,
      }),
    );
    if (series.length <= 60) {
      for (const p of series)
        svg.append(s("circle", { cx: x(p.x), cy: y(p.value), r: 2.4, fill: colour }));
    }
  }
  body.append(svg);
  hover(body, svg, placed, x, y, spans);
  return card;
}

/** Show the nearest point's step and value under the pointer. */
function hover(body, svg, placed, x, y, spans) {
  const marker = s("circle", { r: 4.5, class: "hover-dot", visibility: "hidden" });
  const guide = s("line", {
    class: "hover-guide",
    y1: M.top,
    y2: H - M.bottom,
    visibility: "hidden",
  });
  svg.append(guide, marker);
  const tip = h("div", { class: "chart-tip", hidden: true });
  body.append(tip);
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * W;
    let best = placed[0];
    for (const p of placed) if (Math.abs(x(p.x) - px) < Math.abs(x(best.x) - px)) best = p;
    marker.setAttribute("cx", x(best.x));
    marker.setAttribute("cy", y(best.value));
    marker.setAttribute("fill", stageColour(best.stage_idx ?? 0));
    guide.setAttribute("x1", x(best.x));
    guide.setAttribute("x2", x(best.x));
    marker.setAttribute("visibility", "visible");
    guide.setAttribute("visibility", "visible");
    const staged = spans.size > 1 ? ` (stage ${(best.stage_idx ?? 0) + 1}, step ${best.step})` : "";
    tip.textContent = `step ${best.x}${staged}: ${num(best.value)}`;
    tip.hidden = false;
    const left = (x(best.x) / W) * box.width;
    tip.style.left = `${Math.min(Math.max(left, 60), box.width - 60)}px`;
  });
  svg.addEventListener("mouseleave", () => {
    marker.setAttribute("visibility", "hidden");
    guide.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
}
