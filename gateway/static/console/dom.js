// DOM helpers. Server data only ever enters the page as text nodes or attribute values set through
// the DOM API — never through innerHTML — so names like "<script>…" show literally.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) { // handlers are functions; an on* attribute string would be code
      if (typeof v === "function") el.addEventListener(k.slice(2), v);
    } else if (k === "text") el.textContent = String(v);
    else if (k === "value" && "value" in el) el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled" || k === "multiple") el[k] = Boolean(v);
    else if (k === "style") el.style.cssText = String(v); // CSSOM: a style attribute would need 'unsafe-inline' in the CSP
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  return el;
}

/** h("button", {class: "primary", onclick}, "Save 保存") */
export function h(tag, props, ...children) {
  return append(setProps(document.createElement(tag), props), children);
}

/** The same for SVG elements. */
export function s(tag, props, ...children) {
  return append(setProps(document.createElementNS(SVG_NS, tag), props), children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

// -- formatting -----------------------------------------------------------------------------------

export const fmt = {
  int: (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US")),
  money: (x) => (x === null || x === undefined ? "—" : `¥${Number(x).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`),
  pct: (r) => (r === null || r === undefined ? "—" : `${(r * 100).toFixed(1)}%`),
  secs: (s) => {
    if (s === null || s === undefined) return "—";
    if (s < 90) return `${s}s`;
    if (s < 5400) return `${Math.round(s / 60)}m`;
    return `${(s / 3600).toFixed(1)}h`;
  },
  dt: (iso) => {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString("zh-CN", { hour12: false });
  },
};

// -- dates with the browser's offset -------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** "+08:00" for the browser's zone at that moment. */
export function offsetOf(d) {
  const m = -d.getTimezoneOffset();
  return `${m >= 0 ? "+" : "-"}${pad(Math.floor(Math.abs(m) / 60))}:${pad(Math.abs(m) % 60)}`;
}

/** A datetime-local value ("2026-11-01T10:00[:ss]") as ISO 8601 with the browser's offset. */
export function localToIso(value) {
  if (!value) return null;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return null;
  const withSecs = value.length === 16 ? `${value}:00` : value;
  return `${withSecs}${offsetOf(d)}`;
}

/** A date input value ("2026-11-01") as midnight there, with the browser's offset. */
export function dateToIso(value, addDays = 0) {
  if (!value) return null;
  const d = new Date(`${value}T00:00:00`);
  d.setDate(d.getDate() + addDays);
  return `${dateValue(d)}T00:00:00${offsetOf(d)}`;
}

/** A Date as the value of an <input type=date>. */
export function dateValue(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** Now as the value of an <input type=datetime-local step=1>. */
export function nowLocalValue() {
  const d = new Date();
  return `${dateValue(d)}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// -- common widgets ---------------------------------------------------------------------------------

/** An API error (or any error) as a readable line. */
export function errorText(err) {
  if (!err) return "";
  if (err.code) return `${err.message}${err.field ? ` (${err.field})` : ""} · ${err.status || ""} ${err.code}`.trim();
  return String(err.message || err);
}

export function errorBox(err) {
  return h("p", { class: "err", role: "alert" }, errorText(err));
}

/** A table from columns [{label, get(row) -> Node|string, num?}] and rows. */
export function table(columns, rows, { onRow, empty = "Nothing here 暂无", attrs } = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)));
  const body = rows.length
    ? rows.map((r) => {
        const tr = h("tr", { class: onRow ? "click" : null, ...(attrs ? attrs(r) : {}) },
          columns.map((c) => h("td", { class: c.num ? "num" : null }, c.get(r))));
        if (onRow) tr.addEventListener("click", (e) => { if (!e.target.closest("button, a, input, select")) onRow(r); });
        return tr;
      })
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))];
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

export function statusBadge(status) {
  return h("span", { class: `status ${status || ""}`, "data-status": status || "" }, status || "—");
}

export function tags(list) {
  return (list || []).map((t) => h("span", { class: "tag" }, t));
}

/** A labelled form field with a slot for its error; `name` is the API's field path (for 422s). */
export function field(label, control, name, hint) {
  return h("label", { class: "field", "data-field": name || "" }, label, control, hint ? h("span", { class: "hint" }, hint) : null,
    h("span", { class: "field-error" }));
}

/** Show a 422's message next to the field it names (its closest declared parent), else in `fallback`. */
export function showFieldError(form, err, fallback) {
  for (const el of form.querySelectorAll(".field.invalid")) {
    el.classList.remove("invalid");
    el.querySelector(".field-error").textContent = "";
  }
  if (fallback) fallback.textContent = "";
  if (!err) return;
  let path = err.field || "";
  if (!path) { // a whole-body rule ("a coupon campaign needs coupon_id"): the field its message names
    const named = [...form.querySelectorAll(".field[data-field]")].map((f) => f.dataset.field)
      .find((f) => f && new RegExp(`\\b${f.split(".").pop()}\\b`).test(err.message || ""));
    path = named || "";
  }
  while (path) {
    const el = [...form.querySelectorAll(".field[data-field]")].find((f) => f.dataset.field === path);
    if (el) {
      el.classList.add("invalid");
      el.querySelector(".field-error").textContent = err.message;
      const control = el.querySelector("input, select, textarea");
      if (control) control.focus();
      return;
    }
    path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
  }
  if (fallback) fallback.textContent = errorText(err);
}
