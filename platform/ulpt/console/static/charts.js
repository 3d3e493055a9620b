// Small SVG charts drawn from recorded metrics: curves (one line per fit) and a histogram.

import { el, svg } from "./dom.js";

const W = 420, H = 220, PAD = 34;
const COLORS = ["#0b57d0", "#a50e0e", "#0b6e2d", "#8a4b00", "#6b2fa0", "#006a6a", "#8c1d5c", "#444"];

function axes(xMax, yMin, yMax) {
  return [
    svg("line", { x1: PAD, y1: H - PAD, x2: W - 8, y2: H - PAD, stroke: "#767676" }),
    svg("line", { x1: PAD, y1: 8, x2: PAD, y2: H - PAD, stroke: "#767676" }),
    xMax === null ? null : svg("text", { x: PAD, y: H - PAD + 14 }, "0"),
    xMax === null ? null : svg("text", { x: W - 30, y: H - PAD + 14 }, String(xMax)),
    svg("text", { x: 2, y: H - PAD }, yMin.toPrecision(3)),
    svg("text", { x: 2, y: 16 }, yMax.toPrecision(3)),
  ];
}

/** series: [{label, points: [[x, y], ...]}]; a figure with a line per series and a text legend. */
export function lineChart(title, series, yLabel) {
  const points = series.flatMap((s) => s.points);
  if (!points.length) return el("p", { class: "muted" }, `${title}: nothing recorded yet.`);
  const xMax = Math.max(...points.map((p) => p[0]), 1);
  let yMin = Math.min(...points.map((p) => p[1]));
  let yMax = Math.max(...points.map((p) => p[1]));
  if (yMax === yMin) { yMax += 0.5; yMin -= 0.5; }
  const x = (v) => PAD + (v / xMax) * (W - PAD - 8);
  const y = (v) => H - PAD - ((v - yMin) / (yMax - yMin)) * (H - PAD - 8);
  const lines = series.map((s, i) =>
    svg("polyline", {
      points: s.points.map(([a, b]) => `${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(" "),
      fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.5,
    }, svg("title", {}, s.label)));
  const dots = series.flatMap((s, i) => s.points.length > 12 ? [] : s.points.map(([a, b]) =>
    svg("circle", { cx: x(a).toFixed(1), cy: y(b).toFixed(1), r: 2.5, fill: COLORS[i % COLORS.length] })));
  const chart = svg("svg", { class: "chart", width: W, height: H, role: "img", "aria-label": `${title} (${yLabel} by step)` },
    ...axes(xMax, yMin, yMax), ...lines, ...dots);
  return el("figure", {}, chart, el("figcaption", {}, `${title}: ${yLabel} by step, ${series.length} fit(s)`));
}

/** A histogram of values in `bins` equal bins, with each bin's count as its title. */
export function histogram(title, values, bins = 10) {
  if (!values.length) return el("p", { class: "muted" }, `${title}: no values yet.`);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { hi += 0.5; lo -= 0.5; }
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))] += 1;
  const top = Math.max(...counts);
  const width = (W - PAD - 8) / bins;
  const bars = counts.map((c, i) => {
    const h = (c / top) * (H - PAD - 8);
    const from = lo + ((hi - lo) * i) / bins, to = lo + ((hi - lo) * (i + 1)) / bins;
    return svg("rect", { x: PAD + i * width + 1, y: H - PAD - h, width: width - 2, height: h, fill: "#0b57d0" },
      svg("title", {}, `${from.toPrecision(3)}–${to.toPrecision(3)}: ${c}`));
  });
  const chart = svg("svg", { class: "chart", width: W, height: H, role: "img", "aria-label": `${title} histogram` },
    ...axes(null, 0, top), ...bars,
    svg("text", { x: PAD, y: H - 4 }, lo.toPrecision(3)), svg("text", { x: W - 40, y: H - 4 }, hi.toPrecision(3)));
  return el("figure", {}, chart, el("figcaption", {}, `${title}: ${values.length} adapter(s)`));
}
