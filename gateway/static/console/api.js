// The admin API client: bearer token from sessionStorage, JSON in and out, errors as ApiError.

const KEY = "gw.console.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

/** `{"error": {"code", "message", "field"?}}` from the server, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

let unauthorized = () => {};
/** Called with the ApiError whenever the server answers 401 (the console goes back to sign-in). */
export function onUnauthorized(fn) { unauthorized = fn; }

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token.get() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network", `Network error 网络错误: ${e.message}`);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    const err = new ApiError(resp.status, e.code || "http_error", e.message || `${resp.status} ${resp.statusText}`, e.field);
    if (resp.status === 401) unauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path, params) => api("GET", path + query(params));
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const patch = (path, body) => api("PATCH", path, body);

/** Every page of a list endpoint (`{"items", "next"?}` with ?after=), up to `max` items. */
export async function all(path, params = {}, max = 2000) {
  const items = [];
  let after;
  for (;;) {
    const page = await get(path, { ...params, limit: 500, after });
    items.push(...page.items);
    if (page.next === undefined || page.next === null || items.length >= max) return items;
    after = page.next;
  }
}
