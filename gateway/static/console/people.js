// Customers 顾客 (search, detail, transfer, tags) and Clerks 导购 (list, leave with a hand-over).

import { all, get, patch, post } from "./api.js";
import { errorText, field, fmt, h, replace, statusBadge, table, tags } from "./dom.js";

async function lookups() {
  const [stores, clerks] = await Promise.all([all("/stores"), all("/clerks")]);
  return {
    stores, clerks,
    store: Object.fromEntries(stores.map((x) => [x.id, x.name])),
    clerk: Object.fromEntries(clerks.map((x) => [x.id, x])),
  };
}

// An erased customer's record stays (anonymous); it reads as erased, never as a nameless customer.
const customerName = (c) => (c.erased_at ? "erased 已删除" : c.name || "(no name 无名)");
const clerkLabel = (c, n) => (c ? `${c.display_name} (${c.name}) · ${n.store[c.store_id] || `store #${c.store_id}`}` : "—");

// -- customers --------------------------------------------------------------------------------------

export async function customers(ctx) {
  const n = await lookups();
  const q = h("input", { id: "cust-q", type: "search", placeholder: "Name 姓名…" });
  const store = h("select", { id: "cust-store" }, h("option", { value: "" }, "All stores 全部门店"),
    n.stores.map((st) => h("option", { value: st.id }, st.name)));
  const holder = h("div", { id: "customers" });
  const more = h("button", { type: "button", id: "cust-more", hidden: true }, "More 更多");
  const error = h("p", { class: "err", role: "alert" });
  let rows = [];
  let after;
  const cols = [
    { label: "#", get: (c) => String(c.id), num: true },
    { label: "Name 姓名", get: (c) => h("a", { href: `#/customers/${c.id}`, class: "cust-name" }, customerName(c)) },
    { label: "Store 门店", get: (c) => n.store[c.store_id] || "—" },
    { label: "Tags 标签", get: (c) => tags(c.tags) },
    { label: "Marketing 营销", get: (c) => (c.erased_at ? "erased 已删除" : c.opted_out_at ? "opted out 退订" : "ok") },
    { label: "Since 加入", get: (c) => fmt.dt(c.created_at) },
  ];
  let generation = 0; // a newer search wins over an older one still in flight
  async function load(reset) {
    const mine = ++generation;
    const page = await get("/customers", { q: q.value.trim(), store_id: store.value, limit: 50, after: reset ? undefined : after });
    if (!ctx.alive || mine !== generation) return;
    rows = (reset ? [] : rows).concat(page.items);
    after = page.next;
    more.hidden = after === undefined || after === null;
    replace(holder, table(cols, rows, { onRow: (c) => { location.hash = `#/customers/${c.id}`; },
      empty: "No customers found 未找到顾客", attrs: (c) => ({ "data-customer-id": c.id }) }));
  }
  const run = (reset) => load(reset).then(() => { error.textContent = ""; }, (err) => { error.textContent = errorText(err); });
  const form = h("form", { class: "toolbar", id: "cust-search" }, q, ctx.me.role === "store_manager" ? null : store,
    h("button", { type: "submit" }, "Search 搜索"));
  form.addEventListener("submit", (e) => { e.preventDefault(); run(true); });
  more.addEventListener("click", () => run(false));
  replace(ctx.root, h("h2", {}, "Customers 顾客"), form, error, h("div", { class: "card" }, holder, more));
  await load(true);
}

export async function customer(ctx, id) {
  const [n, c] = await Promise.all([lookups(), get(`/customers/${id}`)]);
  const active = n.clerks.filter((x) => x.status === "active");
  const open = (c.bindings || []).find((b) => !b.valid_to);
  const msg = h("p", { id: "cust-msg", role: "status" });
  const canEdit = ["admin", "store_manager"].includes(ctx.me.role);

  // tags: a comma list, saved with PATCH
  const tagInput = h("input", { id: "tags-input", value: (c.tags || []).join(", "), size: 40 });
  const tagForm = h("form", { class: "toolbar" }, field("Tags 标签 (comma 逗号分隔)", tagInput, "tags"),
    h("button", { type: "submit", id: "tags-save" }, "Save tags 保存标签"));
  tagForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const list = tagInput.value.split(/[,，]/).map((t) => t.trim()).filter(Boolean);
      const out = await patch(`/customers/${id}`, { tags: list });
      tagInput.value = (out.tags || []).join(", ");
      msg.className = "ok";
      msg.textContent = "Tags saved 标签已保存";
    } catch (err) { msg.className = "err"; msg.textContent = errorText(err); }
  });

  // transfer to another clerk (or assign one when there is none)
  const to = h("select", { id: "transfer-to" }, active.filter((x) => !open || x.id !== open.clerk_id)
    .map((x) => h("option", { value: x.id }, clerkLabel(x, n))));
  const transfer = h("form", { class: "toolbar" }, field(open ? "Transfer to 转给" : "Assign to 分配给", to, "clerk_id"),
    h("button", { type: "submit", id: "transfer-btn", class: "primary" }, open ? "Transfer 转移" : "Assign 分配"));
  transfer.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!to.value) return;
    try {
      const out = await post(`/customers/${id}/transfer`, { clerk_id: Number(to.value) });
      msg.className = "ok";
      msg.textContent = `Done 完成: ${out.status}`;
      ctx.later(() => customer(ctx, id), 600);
    } catch (err) { msg.className = "err"; msg.textContent = errorText(err); }
  });

  replace(ctx.root,
    h("div", { class: "toolbar" }, h("a", { href: "#/customers" }, "← Customers 顾客")),
    h("div", { class: "card" },
      h("h2", { id: "cust-title" }, customerName(c)),
      h("dl", { class: "kv" },
        h("dt", {}, "Customer 顾客"), h("dd", {}, `#${c.id}`),
        h("dt", {}, "Store 门店"), h("dd", {}, n.store[c.store_id] || "—"),
        h("dt", {}, "Advisor 导购"), h("dd", { id: "cust-advisor" }, open ? clerkLabel(n.clerk[open.clerk_id], n) : "none 无"),
        h("dt", {}, "Tags 标签"), h("dd", {}, tags(c.tags)),
        h("dt", {}, "Consent 同意"), h("dd", {}, c.consent_at ? `${fmt.dt(c.consent_at)} (${c.consent_version || ""})` : "—"),
        h("dt", {}, "Opted out 退订"), h("dd", {}, fmt.dt(c.opted_out_at)),
        c.unassigned ? [h("dt", {}, "Waiting 待分配"), h("dd", {}, `${c.unassigned.reason || ""} · ${fmt.dt(c.unassigned.created_at)}`)] : null),
      canEdit && !c.erased_at ? [tagForm, transfer] : null, msg),
    h("div", { class: "card" }, h("h3", {}, "Identities 身份"), table([
      { label: "Platform 平台", get: (i) => i.platform }, { label: "Account 账号", get: (i) => i.account },
      { label: "External id", get: (i) => i.external_id }, { label: "Since", get: (i) => fmt.dt(i.created_at) },
      { label: "Last seen", get: (i) => fmt.dt(i.last_seen_at) }], c.identities || [])),
    h("div", { class: "card" }, h("h3", {}, "Bindings 绑定历史"), table([
      { label: "Clerk 导购", get: (b) => clerkLabel(n.clerk[b.clerk_id], n) },
      { label: "From 起", get: (b) => fmt.dt(b.valid_from) }, { label: "To 止", get: (b) => (b.valid_to ? fmt.dt(b.valid_to) : "open 当前") },
      { label: "Source 来源", get: (b) => b.source }, { label: "Ended 结束原因", get: (b) => b.end_reason || "—" },
      // bindings of a record merged into this one stay on that record (its ledger is its own)
      { label: "Record 记录", get: (b) => (b.customer_id === c.id ? "—" : `#${b.customer_id} (merged 已合并)`) }],
      c.bindings || [], { attrs: (b) => ({ "data-binding-clerk": b.clerk_id, "data-open": b.valid_to ? "no" : "yes" }) })),
    h("div", { class: "card" }, h("h3", {}, "History 互动记录 (latest 100)"), table([
      { label: "When 时间", get: (i) => fmt.dt(i.occurred_at) }, { label: "Type 类型", get: (i) => i.type },
      { label: "Clerk 导购", get: (i) => (i.clerk_id ? (n.clerk[i.clerk_id]?.display_name || `#${i.clerk_id}`) : "—") },
      { label: "Campaign 活动", get: (i) => (i.campaign_id ? h("a", { href: `#/campaigns/${i.campaign_id}` }, `#${i.campaign_id}`) : "—") },
      { label: "Detail 详情", get: (i) => (i.payload ? JSON.stringify(i.payload) : "") }], c.history || [])));
}

// -- clerks -------------------------------------------------------------------------------------------

export async function clerks(ctx) {
  const n = await lookups();
  const status = h("select", { id: "clerk-status" }, h("option", { value: "active" }, "Active 在职"),
    h("option", { value: "left" }, "Left 离职"), h("option", { value: "" }, "All 全部"));
  const holder = h("div", { id: "clerks" });
  const panel = h("div", { id: "leave-panel" });
  const canLeave = ["admin", "store_manager"].includes(ctx.me.role);

  function draw() {
    const rows = n.clerks.filter((c) => !status.value || c.status === status.value);
    replace(holder, table([
      { label: "#", get: (c) => String(c.id), num: true },
      { label: "Display name 昵称", get: (c) => c.display_name }, { label: "Name 姓名", get: (c) => c.name },
      { label: "Store 门店", get: (c) => n.store[c.store_id] || `#${c.store_id}` },
      { label: "Role 角色", get: (c) => c.role }, { label: "Status 状态", get: (c) => statusBadge(c.status) },
      { label: "Left 离职", get: (c) => fmt.dt(c.left_at) },
      { label: "", get: (c) => (canLeave && c.status === "active"
        ? h("button", { type: "button", class: "danger leave-btn", "data-clerk-id": c.id, onclick: () => leave(c) }, "Leave / hand over 离职交接")
        : "") }],
    rows, { empty: "No clerks 暂无导购", attrs: (c) => ({ "data-clerk-id": c.id }) }));
  }

  // The hand-over: pick a successor (or the policy), see how many customers move, confirm.
  async function leave(c) {
    const others = n.clerks.filter((x) => x.status === "active" && x.id !== c.id)
      .sort((a, b) => (b.store_id === c.store_id) - (a.store_id === c.store_id));
    const successor = h("select", { id: "successor" }, h("option", { value: "" }, "By the handover policy 按交接策略"),
      others.map((x) => h("option", { value: x.id }, clerkLabel(x, n))));
    const err = h("p", { class: "err", role: "alert" });
    const step = h("div");
    const cont = h("button", { type: "button", id: "leave-continue", class: "primary" }, "Continue 下一步");
    replace(panel, h("div", { class: "card", "data-leaving": c.id },
      h("h3", {}, `${c.display_name} leaves · ${c.display_name} 离职交接`),
      field("Successor 接手导购", successor, "successor_id"), cont,
      h("button", { type: "button", onclick: () => replace(panel) }, "Close 关闭"), step, err));
    cont.addEventListener("click", async () => {
      err.textContent = "";
      let count = "?";
      try { count = (await all("/customers", { clerk_id: c.id })).length; } catch { /* the count is a courtesy */ }
      const target = successor.value ? clerkLabel(n.clerk[successor.value], n) : "the handover policy 交接策略";
      const confirmBtn = h("button", { type: "button", id: "leave-confirm", class: "danger" }, "Confirm leave 确认离职");
      replace(step, h("div", { class: "confirm" },
        h("p", {}, `${c.display_name} will be marked as left; ${count} customer(s) go to ${target}. `,
          `确认后 ${c.display_name} 的 ${count} 位顾客将交给接手导购。`),
        confirmBtn, " ", h("button", { type: "button", onclick: () => replace(step) }, "Back 返回")));
      confirmBtn.addEventListener("click", async () => {
        confirmBtn.disabled = true;
        try {
          const body = successor.value ? { successor_id: Number(successor.value) } : {};
          const out = await post(`/clerks/${c.id}/leave`, body);
          const counts = Object.entries(out.customers || {});
          replace(step, h("div", { class: "notice", id: "leave-result" },
            h("p", {}, `${c.display_name}: ${out.status}. Customers 顾客:`),
            counts.length ? h("ul", {}, counts.map(([k, v]) => h("li", { "data-outcome": k, "data-count": v }, `${k}: ${v}`)))
              : h("p", {}, "none 无")));
          cont.disabled = successor.disabled = true;
          const fresh = await lookups();
          Object.assign(n, fresh);
          draw();
        } catch (e) { err.textContent = errorText(e); confirmBtn.disabled = false; }
      });
    });
    panel.scrollIntoView({ block: "nearest" });
  }

  status.addEventListener("change", draw);
  replace(ctx.root, h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Clerks 导购"), status), panel,
    h("div", { class: "card" }, holder));
  draw();
}
