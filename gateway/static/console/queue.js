// Queue 待分配 (customers waiting for an advisor: assign one) and Dead letters 死信 (dead and held
// outbound messages: retry).

import { all, get, post } from "./api.js";
import { errorText, fmt, h, replace, table } from "./dom.js";

export async function waiting(ctx, notice) {
  const [stores, clerks, q] = await Promise.all([all("/stores"), all("/clerks", { status: "active" }), get("/queue", { limit: 500 })]);
  const store = Object.fromEntries(stores.map((x) => [x.id, x.name]));
  const msg = h("p", { role: "status", id: "queue-msg", class: notice ? "ok" : null }, notice || "");

  function picker(entry) {
    // the entry's store first, then the rest
    const sorted = [...clerks].sort((a, b) => (b.store_id === entry.store_id) - (a.store_id === entry.store_id));
    const sel = h("select", { class: "assign-to" }, sorted.map((c) =>
      h("option", { value: c.id }, `${c.display_name} · ${store[c.store_id] || `#${c.store_id}`}`)));
    const btn = h("button", { type: "button", class: "primary assign-btn", onclick: async () => {
      btn.disabled = true;
      try {
        const out = await post(`/customers/${entry.customer_id}/transfer`, { clerk_id: Number(sel.value) });
        await waiting(ctx, `${entry.customer_name || `#${entry.customer_id}`} → ${sel.selectedOptions[0].textContent}: ${out.status}`);
      } catch (err) {
        msg.className = "err";
        msg.textContent = errorText(err);
        btn.disabled = false;
      }
    } }, "Assign 分配");
    return clerks.length ? h("span", {}, sel, " ", btn) : h("span", { class: "muted" }, "No active clerk 无在职导购");
  }

  if (!ctx.alive) return;
  replace(ctx.root, h("h2", {}, "Queue 待分配"),
    h("p", { class: "hint" }, "Customers without an advisor, oldest first. They are answered in the brand's voice until assigned."),
    msg,
    h("div", { class: "card", id: "queue" }, table([
      { label: "Customer 顾客", get: (e) => h("a", { href: `#/customers/${e.customer_id}` }, e.customer_name || `#${e.customer_id}`) },
      { label: "Store 门店", get: (e) => store[e.store_id] || "—" },
      { label: "Reason 原因", get: (e) => e.reason || "—" },
      { label: "Waiting since 等待自", get: (e) => fmt.dt(e.created_at) },
      { label: "Assign 分配", get: picker }], q.items, { empty: "Nobody is waiting 无待分配顾客",
      attrs: (e) => ({ "data-customer-id": e.customer_id }) })));
}

function messageText(m) {
  return ((m && m.segments) || []).map((sg) => sg.text || sg.name || sg.title || sg.url || `[${sg.type}]`).join(" ");
}

export async function dead(ctx, status = "dead", notice = "") {
  const msg = h("p", { role: "status", id: "dead-msg", class: notice ? "ok" : null }, notice);
  const tabs = h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Dead letters 死信"),
    ["dead", "held"].map((st) => h("button", { type: "button", class: st === status ? "primary" : null, "data-tab": st,
      onclick: () => dead(ctx, st).catch((err) => { msg.className = "err"; msg.textContent = errorText(err); }) }, st === "dead" ? "Dead 失败" : "Held 暂缓")));
  const page = await get("/outbox", { status, limit: 200 });
  if (!ctx.alive) return;
  const retry = (row) => h("button", { type: "button", class: "retry-btn", "data-outbox-id": row.id, onclick: async (e) => {
    const btn = e.currentTarget;
    btn.disabled = true;
    try {
      await post(`/outbox/${row.id}/retry`);
      await dead(ctx, status, `#${row.id} queued again 已重新排队`);
    } catch (err) {
      msg.className = "err";
      msg.textContent = errorText(err);
      btn.disabled = false;
    }
  } }, "Retry 重试");
  replace(ctx.root, tabs, msg, h("div", { class: "card", id: "outbox" }, table([
    { label: "#", get: (r) => String(r.id), num: true },
    { label: "Account 账号", get: (r) => `${r.platform}/${r.account}` },
    { label: "Kind 类型", get: (r) => r.kind },
    { label: "To 收件人", get: (r) => (r.customer_id ? h("a", { href: `#/customers/${r.customer_id}` }, `customer #${r.customer_id}`)
      : r.clerk_id ? `clerk #${r.clerk_id}` : "—") },
    { label: "Message 消息", get: (r) => messageText(r.message).slice(0, 120) },
    { label: "Attempts 次数", get: (r) => String(r.attempts), num: true },
    { label: "Error 错误", get: (r) => [r.error_code || "", r.last_error ? ` ${r.last_error}` : ""].join("") || "—" },
    { label: "Created 创建", get: (r) => fmt.dt(r.created_at) },
    { label: "", get: retry }], page.items, { empty: `No ${status} messages 暂无`, attrs: (r) => ({ "data-outbox-id": r.id }) })));
}
