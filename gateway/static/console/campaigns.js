// Campaigns 活动: the list, the builder (with the audience), preview, schedule / cancel, live
// progress while a run materialises and sends, and the report with its funnel.

import { all, get, post } from "./api.js";
import {
  dateToIso, dateValue, errorBox, errorText, field, fmt, h, localToIso, nowLocalValue, replace, showFieldError, statusBadge, table,
} from "./dom.js";
import { funnelChart, progressBar } from "./charts.js";

const KINDS = { coupon: "Coupon 优惠券", new_product: "New product 新品", notice: "Notice 通知" };
const ACTIVE_RUN = ["pending", "materializing", "dispatching"];
const PLACEHOLDERS = ["{customer_name}", "{advisor_name}", "{coupon_code}", "{link}", "{product_name}"];

function scheduleText(c) {
  const sc = c.schedule;
  if (!sc) return "— (draft, no schedule 未排期)";
  if (sc.at) return `at ${fmt.dt(sc.at)}`;
  return `cron ${sc.cron}${sc.until ? ` until ${fmt.dt(sc.until)}` : ""}`;
}

// -- list ---------------------------------------------------------------------------------------------

export async function list(ctx) {
  const rows = [];
  const more = h("button", { type: "button", hidden: true }, "More 更多");
  const holder = h("div");
  const cols = [
    { label: "#", get: (c) => String(c.id), num: true },
    { label: "Name 名称", get: (c) => h("a", { href: `#/campaigns/${c.id}` }, c.name) },
    { label: "Kind 类型", get: (c) => KINDS[c.kind] || c.kind },
    { label: "Status 状态", get: (c) => statusBadge(c.status) },
    { label: "Mode 方式", get: (c) => c.mode },
    { label: "Schedule 排期", get: scheduleText },
    { label: "Next run 下次", get: (c) => fmt.dt(c.next_run_at) },
    { label: "Created 创建", get: (c) => fmt.dt(c.created_at) },
  ];
  let before;
  async function load() {
    const page = await get("/campaigns", { limit: 100, before });
    rows.push(...page.items);
    before = page.next;
    more.hidden = before === undefined || before === null;
    replace(holder, table(cols, rows, { onRow: (c) => { location.hash = `#/campaigns/${c.id}`; },
      empty: "No campaigns yet 暂无活动", attrs: (c) => ({ "data-campaign-id": c.id }) }));
  }
  more.addEventListener("click", () => load().catch((e) => holder.append(errorBox(e))));
  await load();
  replace(ctx.root,
    h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Campaigns 活动"),
      h("a", { href: "#/campaigns/new" }, h("button", { class: "primary", type: "button", id: "new-campaign" }, "New campaign 新建活动"))),
    h("div", { class: "card" }, holder, more));
}

// -- builder --------------------------------------------------------------------------------------------

function options(items, label, { none } = {}) {
  return [none ? h("option", { value: "" }, none) : null, ...items.map((x) => h("option", { value: x.id }, label(x)))];
}

function selected(sel) {
  return [...sel.selectedOptions].map((o) => Number(o.value)).filter((n) => n);
}

export async function builder(ctx) {
  const [products, coupons, stores, clerks] = await Promise.all([
    all("/products"), all("/coupons"), all("/stores"), all("/clerks", { status: "active" })]);
  const storeName = Object.fromEntries(stores.map((st) => [st.id, st.name]));

  const name = h("input", { id: "c-name", required: true, maxlength: 200 });
  const kind = h("select", { id: "c-kind" }, Object.entries(KINDS).map(([k, v]) => h("option", { value: k }, v)));
  const text = h("textarea", { id: "c-text", maxlength: 2000, placeholder: "{customer_name}您好，{advisor_name}为您留了一张券：{coupon_code}" });
  const hints = h("div", { class: "placeholders" }, "Insert 插入: ", PLACEHOLDERS.map((p) => h("button", {
    type: "button", "data-placeholder": p,
    onclick: () => { // at the cursor
      const at = text.selectionStart ?? text.value.length;
      text.value = text.value.slice(0, at) + p + text.value.slice(text.selectionEnd ?? at);
      text.focus();
      text.selectionStart = text.selectionEnd = at + p.length;
    },
  }, p)));
  const link = h("input", { id: "c-link", type: "url", placeholder: "https://…" });
  const product = h("select", { id: "c-product" }, options(products, (p) => `${p.name} · ${p.sku} · ¥${p.price}`, { none: "— none 无 —" }));
  const coupon = h("select", { id: "c-coupon" }, options(coupons, (c) =>
    `${c.name} · ¥${c.value} · ${c.codes - c.issued} left 剩余`, { none: "— none 无 —" }));
  const aStores = h("select", { id: "c-stores", multiple: true }, options(stores, (st) => `${st.name}${st.city ? ` · ${st.city}` : ""}`));
  const aTags = h("input", { id: "c-tags", placeholder: "vip, 高端" });
  const aClerks = h("select", { id: "c-clerks", multiple: true }, options(clerks, (c) =>
    `${c.display_name} (${c.name}) · ${storeName[c.store_id] || `store #${c.store_id}`}`));
  const nearStore = h("select", { id: "c-near-store" }, options(stores, (st) => st.name, { none: "— anywhere 不限 —" }));
  const nearKm = h("input", { id: "c-near-km", type: "number", min: 0.1, max: 500, step: 0.1, placeholder: "km" });
  const after = h("input", { id: "c-bound-after", type: "date" });
  const beforeD = h("input", { id: "c-bound-before", type: "date" });
  const sender = h("select", { id: "c-sender" }, h("option", { value: "advisor" }, "Advisor 导购本人"), h("option", { value: "brand" }, "Brand 品牌"));
  const when = h("select", { id: "c-when" }, h("option", { value: "" }, "Not yet (draft) 暂不排期"),
    h("option", { value: "at" }, "Once at 定时一次"), h("option", { value: "cron" }, "Repeat (cron) 周期"));
  const at = h("input", { id: "c-at", type: "datetime-local", step: 1 });
  const atNow = h("button", { type: "button", id: "c-at-now", onclick: () => { when.value = "at"; at.value = nowLocalValue(); sync(); } }, "At once 立即");
  const cron = h("input", { id: "c-cron", placeholder: "0 10 * * 1" });
  const until = h("input", { id: "c-until", type: "datetime-local" });
  const holdout = h("input", { id: "c-holdout", type: "number", min: 0, max: 50, step: 1, value: 0 });
  const mode = h("select", { id: "c-mode" }, h("option", { value: "direct" }, "Direct 直接推送"),
    h("option", { value: "clerk_assisted" }, "Clerk-assisted 导购转发"));
  const formError = h("p", { class: "err", id: "c-error", role: "alert" });
  const atBox = h("span", {}, at);
  const cronBox = h("span", {}, cron, " until 截止 ", until);
  const sync = () => {
    atBox.hidden = when.value !== "at";
    cronBox.hidden = when.value !== "cron";
  };
  when.addEventListener("change", sync);
  sync();

  const form = h("form", { id: "campaign-form", novalidate: true },
    h("div", { class: "row" },
      field("Name 名称", name, "name"), field("Kind 类型", kind, "kind"), field("Sender 发送人", sender, "sender"),
      field("Mode 方式", mode, "mode"), field("Holdout 对照组 %", holdout, "holdout_pct", "0–50")),
    field("Text 文案", h("div", {}, text, hints), "content.text",
      "Placeholders 占位符: {customer_name} {advisor_name} {coupon_code} {link} {product_name}"),
    h("div", { class: "row" },
      field("Product 商品", product, "content.product_id"), field("Coupon 优惠券", coupon, "coupon_id"),
      field("Link 链接", link, "content.link", "{link} becomes a tracked link 追踪链接")),
    h("fieldset", {}, h("legend", {}, "Audience 受众 (empty = all members 空为全部会员)"),
      h("div", { class: "row" },
        field("Stores 门店", aStores, "audience.stores"), field("Clerks 导购 (their customers)", aClerks, "audience.clerks"),
        h("div", {},
          field("Tags 标签 (comma 逗号分隔)", aTags, "audience.tags"),
          field("Near store 附近门店", h("span", {}, nearStore, " ", nearKm, " km"), "audience.near")),
        h("div", {},
          field("Bound after 绑定晚于", after, "audience.bound_after"),
          field("Bound before 绑定早于", beforeD, "audience.bound_before")))),
    h("div", { class: "field", "data-field": "schedule" }, "Schedule 排期",
      h("span", {}, when, " ", atNow, " ", atBox, cronBox),
      h("span", { class: "hint" }, `Times in your browser's zone 浏览器时区 (${Intl.DateTimeFormat().resolvedOptions().timeZone}); cron runs in the gateway's zone.`),
      h("span", { class: "field-error" })),
    formError,
    h("button", { class: "primary", type: "submit", id: "c-create" }, "Create draft 创建草稿"));

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const local = (msg, f) => showFieldError(form, { message: msg, field: f, code: "invalid" }, formError);
    const audience = {};
    if (selected(aStores).length) audience.stores = selected(aStores);
    if (selected(aClerks).length) audience.clerks = selected(aClerks);
    const tagList = aTags.value.split(/[,，]/).map((t) => t.trim()).filter(Boolean);
    if (tagList.length) audience.tags = tagList;
    if (nearStore.value) {
      if (!nearKm.value) return local("give the radius in km 请填写半径", "audience.near");
      audience.near = { store_id: Number(nearStore.value), km: Number(nearKm.value) };
    }
    if (after.value) audience.bound_after = dateToIso(after.value);
    if (beforeD.value) audience.bound_before = dateToIso(beforeD.value);
    const body = {
      name: name.value.trim(), kind: kind.value, sender: sender.value, mode: mode.value,
      holdout_pct: holdout.value === "" ? 0 : Number(holdout.value),
      content: { text: text.value }, audience,
    };
    if (product.value) body.content.product_id = Number(product.value);
    if (link.value.trim()) body.content.link = link.value.trim();
    if (coupon.value) body.coupon_id = Number(coupon.value);
    if (when.value === "at") {
      if (!at.value) return local("pick the time 请选择时间", "schedule");
      body.schedule = { at: localToIso(at.value) };
    } else if (when.value === "cron") {
      if (!cron.value.trim()) return local("give a cron expression 请填写 cron", "schedule");
      body.schedule = { cron: cron.value.trim(), ...(until.value ? { until: localToIso(until.value) } : {}) };
    }
    showFieldError(form, null, formError);
    const button = form.querySelector("#c-create");
    button.disabled = true;
    try {
      const made = await post("/campaigns", body);
      location.hash = `#/campaigns/${made.id}`;
    } catch (err) {
      showFieldError(form, err, formError);
    } finally {
      button.disabled = false;
    }
  });

  replace(ctx.root, h("div", { class: "toolbar" }, h("a", { href: "#/campaigns" }, "← Campaigns 活动"),
    h("h2", { class: "grow" }, "New campaign 新建活动")), h("div", { class: "card" }, form));
  name.focus();
}

// -- detail: preview, schedule, cancel, live progress ---------------------------------------------

function audienceText(aud, names) {
  const parts = [];
  if (aud.stores) parts.push(`stores 门店: ${aud.stores.map((i) => names.store[i] || `#${i}`).join(", ")}`);
  if (aud.clerks) parts.push(`clerks 导购: ${aud.clerks.map((i) => names.clerk[i] || `#${i}`).join(", ")}`);
  if (aud.tags) parts.push(`tags 标签: ${aud.tags.join(", ")}`);
  if (aud.near) parts.push(`within ${aud.near.km} km of ${names.store[aud.near.store_id] || `#${aud.near.store_id}`}`);
  if (aud.bound_after) parts.push(`bound after ${fmt.dt(aud.bound_after)}`);
  if (aud.bound_before) parts.push(`bound before ${fmt.dt(aud.bound_before)}`);
  return parts.length ? parts.join(" · ") : "All members 全部会员";
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.map(([k, v, key]) => [h("dt", {}, k), h("dd", key ? { "data-k": key } : {}, v)]));
}

function previewPanel(p, names) {
  const excluded = Object.entries(p.excluded || {}).filter(([, n]) => typeof n === "number");
  const notes = Object.entries(p.excluded || {}).filter(([, n]) => typeof n !== "number");
  return h("div", { "data-preview": "ready" },
    h("h3", {}, "Preview 预览 — nothing was sent 未发送"),
    kv([["Audience 受众", String(p.audience), "audience"], ["Eligible 可发送", String(p.eligible), "eligible"]]),
    p.quiet_hours ? h("p", { class: "hint" }, "Now is within quiet hours: pushes would wait for their end 当前为免打扰时段，推送将延后") : null,
    h("div", { class: "row top" },
      h("div", {}, h("h3", {}, "Excluded 排除"), table(
        [{ label: "Reason 原因", get: ([r]) => r }, { label: "Customers", get: ([, n]) => String(n), num: true }],
        excluded, { attrs: ([r, n]) => ({ "data-excluded": r, "data-count": n }) }),
        notes.map(([, t]) => h("p", { class: "hint" }, String(t)))),
      h("div", {}, h("h3", {}, "By channel 按渠道"), table(
        [{ label: "Channel 渠道", get: ([c]) => c }, { label: "Customers", get: ([, n]) => String(n), num: true }],
        Object.entries(p.by_channel || {}), { attrs: ([c, n]) => ({ "data-channel": c, "data-count": n }) })),
      h("div", {}, h("h3", {}, "By store 按门店"), table(
        [{ label: "Store 门店", get: ([i]) => names.store[i] || `#${i}` }, { label: "Customers", get: ([, n]) => String(n), num: true }],
        Object.entries(p.by_store || {})))),
    h("h3", {}, `Samples 示例 (${(p.samples || []).length})`),
    (p.samples || []).length ? p.samples.map((x) => h("div", { class: "sample", "data-customer-id": x.customer_id },
      h("span", { class: "hint" }, `customer #${x.customer_id} · ${x.channel} · from ${x.sender || "brand 品牌"}`),
      h("pre", { class: "sample" }, x.text)))
      : h("p", { class: "muted" }, "Nobody would receive it 无人可收到"));
}

function isLive(c, rep) {
  if (rep.runs.some((r) => ACTIVE_RUN.includes(r.status))) return true;
  return c.status === "scheduled" && c.next_run_at && new Date(c.next_run_at).getTime() - Date.now() < 120_000;
}

function progressPanel(c, rep, live) {
  const runs = rep.runs;
  const run = runs[runs.length - 1];
  const head = h("div", { class: "toolbar" }, h("h3", { class: "grow" }, "Progress 进度"),
    h("span", { class: "live", "data-live": live ? "on" : "off" }, live ? "Live 实时更新中" : "Not running 未在运行"));
  if (!run) {
    return h("div", { id: "progress", "data-campaign-status": c.status, "data-run-status": "" }, head,
      h("p", { class: "muted" }, c.status === "scheduled" ? `Waiting for ${fmt.dt(c.next_run_at)} 等待运行` : "No runs yet 暂无运行"));
  }
  const q = run.queued || 0;
  return h("div", { id: "progress", "data-campaign-status": c.status, "data-run-status": run.status }, head,
    h("p", {}, `Run 运行 ${fmt.dt(run.scheduled_for)} · `, statusBadge(run.status),
      ` · audience 受众 ${run.audience} · excluded 排除 ${Object.values(run.excluded || {}).reduce((a, b) => a + b, 0)}`,
      runs.length > 1 ? ` · ${runs.length} runs` : ""),
    progressBar("queued", "Queued 已排队", q, run.audience || q),
    progressBar("sent", "Sent 已发送", run.sent, q),
    progressBar("delivered", "Delivered 已送达", run.delivered, q),
    progressBar("failed", "Failed 失败", run.failed, q),
    progressBar("held", "Held 暂缓", run.held, q),
    run.pending ? h("p", { class: "hint" }, `${run.pending} waiting to send 待发送`) : null);
}

async function names() {
  const [stores, clerks] = await Promise.all([all("/stores"), all("/clerks")]);
  return { store: Object.fromEntries(stores.map((x) => [x.id, x.name])),
    clerk: Object.fromEntries(clerks.map((x) => [x.id, x.display_name])) };
}

export async function detail(ctx, id) {
  const n = await names();
  let c = await get(`/campaigns/${id}`);
  const summary = h("div");
  const actions = h("div", { class: "toolbar" });
  const actionError = h("p", { class: "err", id: "action-error", role: "alert" });
  const preview = h("div", { id: "preview" });
  const progress = h("div");
  let timer = null;
  let running = false;
  ctx.onLeave(() => clearTimeout(timer));

  const act = (label, idAttr, fn, cls) => h("button", { type: "button", id: idAttr, class: cls, onclick: async (e) => {
    const btn = e.currentTarget;
    btn.disabled = true;
    actionError.textContent = "";
    try { await fn(); } catch (err) { actionError.textContent = errorText(err); } finally { btn.disabled = false; }
  } }, label);

  function drawSummary() {
    const content = c.content || {};
    replace(summary, h("div", { class: "toolbar" }, h("h2", { class: "grow", id: "campaign-name" }, c.name), statusBadge(c.status)),
      kv([["Kind 类型", KINDS[c.kind] || c.kind], ["Sender 发送人", c.sender], ["Mode 方式", c.mode],
        ["Holdout 对照组", `${c.holdout_pct}%`], ["Schedule 排期", scheduleText(c)], ["Next run 下次运行", fmt.dt(c.next_run_at)],
        ["Audience 受众", audienceText(c.audience || {}, n)],
        ["Coupon 优惠券", c.coupon_id ? `#${c.coupon_id}` : "—"], ["Product 商品", content.product_id ? `#${content.product_id}` : "—"],
        ["Link 链接", content.link || "—"], ["Text 文案", h("pre", { class: "sample" }, content.text || "")]]));
    // the buttons are made once and only shown or hidden: a poll never swaps one out under a click
    scheduleBtn.hidden = c.status !== "draft";
    cancelBtn.hidden = c.status === "cancelled" || (c.status === "done" && !running);
  }

  const previewBtn = act("Preview 预览", "preview-btn", async () => {
    replace(preview, h("p", { class: "muted" }, "Counting… 计算中"));
    try { replace(preview, previewPanel(await post(`/campaigns/${id}/preview`), n)); } catch (err) { replace(preview, errorBox(err)); }
  });
  const scheduleBtn = act("Schedule 排期", "schedule-btn", async () => {
    c = await post(`/campaigns/${id}/schedule`);
    await refresh();
  }, "primary");
  const cancelBtn = act("Cancel 取消", "cancel-btn", async () => {
    if (!confirm("Cancel this campaign? Unsent messages will not be sent. 确认取消？")) return;
    await post(`/campaigns/${id}/cancel`);
    await refresh();
  }, "danger");
  replace(actions, previewBtn, scheduleBtn, cancelBtn, h("a", { href: `#/campaigns/${id}/report`, id: "report-link" }, "Report 报告 →"));

  async function refresh() {
    clearTimeout(timer);
    const [cc, rep] = await Promise.all([get(`/campaigns/${id}`), get(`/campaigns/${id}/report`)]);
    if (!ctx.alive) return;
    c = cc;
    running = rep.runs.some((r) => ACTIVE_RUN.includes(r.status));
    drawSummary();
    const live = isLive(c, rep);
    replace(progress, progressPanel(c, rep, live));
    if (live) {
      timer = setTimeout(() => ctx.alive && refresh().catch((err) => {
        replace(progress, errorBox(err));
      }), 2000);
    }
  }

  replace(ctx.root, h("div", { class: "toolbar" }, h("a", { href: "#/campaigns" }, "← Campaigns 活动")),
    h("div", { class: "card" }, summary, actions, actionError), h("div", { class: "card" }, progress),
    h("div", { class: "card" }, preview));
  drawSummary();
  await refresh();
}

// -- report: runs and the funnel ---------------------------------------------------------------------

export async function report(ctx, id) {
  const c = await get(`/campaigns/${id}`);
  const rep = await get(`/campaigns/${id}/report`);
  const tomorrow = new Date(Date.now() + 86_400_000);
  let summary = null;
  try { // orders, GMV and lift come from the attribution report over the campaign's life
    const created = new Date(c.created_at);
    created.setDate(created.getDate() - 1);
    const rows = (await get("/reports/campaigns", { from: dateToIso(dateValue(created)),
      to: dateToIso(dateValue(tomorrow)) })).items || [];
    summary = rows.find((r) => r.campaign_id === c.id) || null;
  } catch { summary = null; }
  const sum = (k) => rep.runs.reduce((a, r) => a + (r[k] || 0), 0);
  const steps = [
    { label: "Queued 已排队", value: sum("queued") },
    { label: "Sent 已发送", value: sum("sent") },
    { label: "Delivered 已送达", value: sum("delivered") },
    { label: "Clicked 点击", value: sum("clicked") },
  ];
  if (c.kind === "coupon") steps.push({ label: "Redeemed 核销", value: sum("redeemed") });
  steps.push({ label: "Orders 订单", value: summary ? summary.orders : sum("orders") });
  const cols = [
    { label: "Scheduled 计划", get: (r) => fmt.dt(r.scheduled_for) },
    { label: "Status 状态", get: (r) => statusBadge(r.status) },
    ...["audience", "queued", "sent", "pending", "delivered", "failed", "held", "cancelled", "clicked", "redeemed", "orders"]
      .map((k) => ({ label: k, get: (r) => fmt.int(r[k]), num: true })),
    { label: "Excluded 排除", get: (r) => Object.entries(r.excluded || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "—" },
  ];
  if (c.mode === "clerk_assisted") cols.push({ label: "Share rate 转发率", get: (r) => fmt.pct(r.share_rate) });
  replace(ctx.root,
    h("div", { class: "toolbar" }, h("a", { href: `#/campaigns/${id}` }, "← Campaign 活动"),
      h("h2", { class: "grow" }, `Report 报告 · ${c.name}`), statusBadge(rep.status)),
    h("div", { class: "card", id: "runs" }, h("h3", {}, "Runs 运行"), table(cols, rep.runs, {
      empty: "No runs yet 暂无运行", attrs: (r) => ({ "data-run-id": r.id, "data-run-status": r.status }) })),
    h("div", { class: "grid" },
      funnelChart("campaign-funnel", "Funnel 转化漏斗", steps, { empty: "No sends yet 暂无发送" }),
      h("div", { class: "card" }, h("h3", {}, "Attribution 归因"), summary ? kv([
        ["Orders 订单", fmt.int(summary.orders)], ["GMV", fmt.money(summary.gmv)],
        ["Holdout 对照组", fmt.int(summary.holdout)], ["Treated rate 推送组转化", fmt.pct(summary.treated_rate)],
        ["Holdout rate 对照组转化", fmt.pct(summary.holdout_rate)], ["Lift 提升", fmt.pct(summary.lift)],
        ["95% CI", summary.ci95 ? summary.ci95.map(fmt.pct).join(" … ") : "—"]])
        : h("p", { class: "muted" }, "No attributed orders yet 暂无归因订单"))));
}
