// Charts as inline SVG, drawn here (no library). Every chart's root carries data-chart="<name>" and
// shows an empty state instead of a blank box when there is nothing to draw.

import { h, s } from "./dom.js";

export const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#db2777", "#7c3aed", "#0891b2", "#dc2626", "#65a30d"];
export const EMPTY = "No data in this period · 本期无数据";

/** The frame every chart sits in: title, then the drawing or the empty state. */
export function chartBox(name, title, body, { empty, note } = {}) {
  return h("section", { class: "chart", "data-chart": name, "data-empty": body ? "false" : "true" },
    h("h3", {}, title),
    body || h("div", { class: "empty" }, empty || EMPTY),
    note ? h("p", { class: "hint" }, note) : null);
}

/** A chart that could not be loaded: the same frame with the error. */
export function chartError(name, title, message) {
  return chartBox(name, title, null, { empty: message });
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function clip(text, n) {
  const t = String(text ?? "");
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

/** Horizontal bars: items [{label, value}] (value a number); `format` labels the values. */
/** `zeroIsData`: a 0 is a measurement (a reply within the second), not the absence of one. */
export function barChart(name, title, items, { format = String, color = PALETTE[0], note, empty, zeroIsData } = {}) {
  const rows = items.filter((i) => Number.isFinite(i.value));
  if (!rows.length || (!zeroIsData && rows.every((i) => i.value === 0))) return chartBox(name, title, null, { note, empty });
  const W = 620, rowH = 26, labelW = 130, valueW = 90, top = 6;
  const max = Math.max(...rows.map((i) => i.value), 0);
  const scale = (W - labelW - valueW - 10) / (max || 1);
  const H = top * 2 + rows.length * rowH;
  const g = rows.map((it, i) => {
    const y = top + i * rowH;
    const w = Math.max(it.value > 0 ? 2 : 0, it.value * scale);
    return s("g", { "data-label": it.label },
      s("title", {}, `${it.label}: ${format(it.value)}`),
      s("text", { x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end", "font-size": 12, fill: "#1f2328" }, clip(it.label, 16)),
      s("rect", { x: labelW, y: y + 4, width: w, height: rowH - 8, rx: 3, fill: it.color || color }),
      s("text", { x: labelW + w + 6, y: y + rowH / 2 + 4, "font-size": 12, fill: "#5b6573" }, format(it.value)));
  });
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title },
    s("line", { x1: labelW, y1: top, x2: labelW, y2: H - top, stroke: "#9aa4b1" }), g);
  return chartBox(name, title, svg, { note });
}

/** Lines over days: series [{name, values: number[]}] aligned with `days` ("YYYY-MM-DD"). */
export function lineChart(name, title, days, series, { format = String, note, empty } = {}) {
  const lines = series.filter((x) => x.values.some((v) => v));
  if (!days.length || !lines.length) return chartBox(name, title, null, { note, empty });
  const W = 620, H = 250, L = 64, R = 14, T = 12, B = 30;
  const max = niceMax(Math.max(...lines.flatMap((x) => x.values)));
  const x = (i) => L + (days.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (days.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => s("g", {},
    s("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), stroke: f ? "#eef0f3" : "#9aa4b1" }),
    s("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6573" }, format(max * f))));
  const ticks = [...new Set([0, Math.floor((days.length - 1) / 2), days.length - 1])].map((i) =>
    s("text", { x: x(i), y: H - 10, "text-anchor": "middle", "font-size": 11, fill: "#5b6573" }, days[i].slice(5)));
  const paths = lines.map((ser, k) => {
    const color = PALETTE[k % PALETTE.length];
    const pts = ser.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    return s("g", { "data-series": ser.name },
      s("title", {}, ser.name),
      s("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }),
      ser.values.map((v, i) => (v ? s("circle", { cx: x(i), cy: y(v), r: 3, fill: color },
        s("title", {}, `${ser.name} ${days[i]}: ${format(v)}`)) : null)));
  });
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, grid, ticks, paths);
  const legend = h("div", { class: "legend" }, lines.map((ser, k) =>
    h("span", {}, h("i", { style: `background:${PALETTE[k % PALETTE.length]}` }), ser.name)));
  return chartBox(name, title, h("div", {}, svg, legend), { note });
}

/** A funnel: steps [{label, value}], each bar centred, with the conversion from the step before. */
export function funnelChart(name, title, steps, { note, empty } = {}) {
  if (!steps.length || !(steps[0].value > 0)) return chartBox(name, title, null, { note, empty });
  const W = 620, rowH = 34, labelW = 150, rateW = 70;
  const max = Math.max(...steps.map((x) => x.value));
  const span = W - labelW - rateW;
  const H = steps.length * rowH + 6;
  const rows = steps.map((st, i) => {
    const w = Math.max(st.value > 0 ? 3 : 0, (st.value / max) * span);
    const yy = 3 + i * rowH;
    const prev = i ? steps[i - 1].value : null;
    const rate = prev ? `${Math.round((st.value / prev) * 100)}%` : "";
    return s("g", { "data-step": st.label, "data-value": st.value },
      s("title", {}, `${st.label}: ${st.value}`),
      s("text", { x: labelW - 8, y: yy + rowH / 2 + 4, "text-anchor": "end", "font-size": 12, fill: "#1f2328" }, st.label),
      s("rect", { x: labelW + (span - w) / 2, y: yy + 4, width: w, height: rowH - 8, rx: 4, fill: PALETTE[i % PALETTE.length] }),
      s("text", { x: labelW + span / 2, y: yy + rowH / 2 + 4, "text-anchor": "middle", "font-size": 12, fill: "#fff",
        stroke: "#1f2328", "stroke-width": 0.3 }, String(st.value)),
      s("text", { x: W - 4, y: yy + rowH / 2 + 4, "text-anchor": "end", "font-size": 12, fill: "#5b6573" }, rate));
  });
  return chartBox(name, title, s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, rows), { note });
}

/** Pairs of bars with a rate between them (the 导购三律 funnel):
 *  groups [{title, from: {label, value}, to: {label, value}, rate}]. */
export function pairChart(name, title, groups, { note, empty } = {}) {
  if (!groups.some((g) => g.from.value > 0 || g.to.value > 0)) return chartBox(name, title, null, { note, empty });
  const W = 620, groupH = 70, labelW = 170, rateW = 80;
  const span = W - labelW - rateW;
  const H = groups.length * groupH;
  const rows = groups.map((g, i) => {
    const max = Math.max(g.from.value, g.to.value, 1);
    const yy = i * groupH;
    const bar = (part, dy, color) => s("g", {},
      s("text", { x: labelW - 8, y: yy + dy + 13, "text-anchor": "end", "font-size": 12, fill: "#1f2328" }, part.label),
      s("rect", { x: labelW, y: yy + dy + 2, width: Math.max(part.value ? 3 : 0, (part.value / max) * span), height: 16, rx: 3, fill: color }),
      s("text", { x: labelW + Math.max(part.value ? 3 : 0, (part.value / max) * span) + 6, y: yy + dy + 14, "font-size": 12, fill: "#5b6573" }, String(part.value)));
    return s("g", { "data-group": g.title },
      s("text", { x: 0, y: yy + 12, "font-size": 12, "font-weight": 600, fill: "#1f2328" }, g.title),
      bar(g.from, 16, PALETTE[0]), bar(g.to, 38, PALETTE[1]),
      s("text", { x: W - 4, y: yy + 40, "text-anchor": "end", "font-size": 15, "font-weight": 600, fill: "#1f2328" },
        g.rate === null || g.rate === undefined ? "—" : `${(g.rate * 100).toFixed(1)}%`));
  });
  return chartBox(name, title, s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, rows), { note });
}

/** A progress bar (HTML): label, value of total. */
export function progressBar(kind, label, value, total) {
  const pct = total > 0 ? Math.min(100, (100 * value) / total) : 0;
  return h("div", { class: `progress ${kind}`, "data-progress": kind, "data-value": value, "data-total": total },
    h("span", {}, label),
    h("div", { class: "bar" }, h("span", { style: `width:${pct.toFixed(1)}%` })),
    h("span", { class: "num" }, `${value} / ${total}`));
}
