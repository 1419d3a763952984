// Dashboards 看板: GMV and commission over time, totals by clerk and store, first-reply times, the
// campaign funnel and the 导购三律 funnel, for a period picked in the browser's calendar days.

import { get } from "./api.js";
import { dateToIso, dateValue, errorText, field, fmt, h, replace, table } from "./dom.js";
import { barChart, chartError, funnelChart, lineChart, pairChart } from "./charts.js";

const TOP = 8;

function topSeries(series, key) {
  return series
    .map((x) => ({ name: x.name || `#${x.id}`, values: (x[key] || []).map(Number) }))
    .map((x) => ({ ...x, total: x.values.reduce((a, b) => a + b, 0) }))
    .filter((x) => x.total > 0)
    .sort((a, b) => b.total - a.total)
    .slice(0, TOP);
}

function bars(rows, label, value) {
  return rows.map((r) => ({ label: r[label], value: value(r) }))
    .filter((x) => Number.isFinite(x.value))
    .sort((a, b) => b.value - a.value)
    .slice(0, 15);
}

const money = (v) => fmt.money(v);

export async function view(ctx) {
  const manager = ctx.me.role === "store_manager";
  const end = new Date();
  const start = new Date();
  start.setDate(start.getDate() - 29);
  const from = h("input", { id: "d-from", type: "date", value: dateValue(start) });
  const to = h("input", { id: "d-to", type: "date", value: dateValue(end) });
  const by = h("select", { id: "d-by" }, h("option", { value: "clerk" }, "By clerk 按导购"), h("option", { value: "store" }, "By store 按门店"));
  const error = h("p", { class: "err", role: "alert" });
  const charts = h("div", { class: "grid", id: "charts" });
  const details = h("div", { class: "card" });
  const apply = h("button", { type: "submit", class: "primary", id: "d-apply" }, "Show 查看");
  const form = h("form", { class: "row card" }, field("From 从", from), field("To (inclusive) 至", to), field("Series 曲线", by), apply,
    h("span", { class: "hint" }, "Days in your browser's zone 按浏览器时区的日期"));

  let generation = 0; // the latest period asked for wins
  async function load() {
    const mine = ++generation;
    error.textContent = "";
    if (!from.value || !to.value || from.value > to.value) {
      error.textContent = "Pick a start on or before the end 开始日期不能晚于结束日期";
      return;
    }
    const period = { from: dateToIso(from.value), to: dateToIso(to.value, 1) };
    replace(charts, h("p", { class: "muted" }, "Loading… 加载中"));
    const settle = (p) => p.then((v) => ({ ok: true, v }), (e) => ({ ok: false, e }));
    const [series, clerks, stores, camps, funnel] = await Promise.all([
      settle(get("/reports/series", { ...period, by: by.value })),
      settle(get("/reports/clerks", period)),
      settle(get("/reports/stores", period)),
      manager ? null : settle(get("/reports/campaigns", period)),
      manager ? null : settle(get("/reports/funnel", period)),
    ]);
    if (!ctx.alive || mine !== generation) return;
    const who = by.value === "clerk" ? "clerk 导购" : "store 门店";
    const out = [];
    if (series.ok) {
      out.push(lineChart("gmv-series", `GMV by ${who} over time · GMV 走势`, series.v.days || [],
        topSeries(series.v.series || [], "gmv"), { format: money, note: `Top ${TOP} by total 前 ${TOP} 名` }));
      out.push(lineChart("commission-series", `Commission by ${who} over time · 佣金走势`, series.v.days || [],
        topSeries(series.v.series || [], "commission"), { format: money, note: `Top ${TOP} by total 前 ${TOP} 名` }));
    } else {
      out.push(chartError("gmv-series", "GMV over time · GMV 走势", errorText(series.e)));
      out.push(chartError("commission-series", "Commission over time · 佣金走势", errorText(series.e)));
    }
    if (clerks.ok) {
      const rows = clerks.v.items;
      out.push(barChart("gmv-by-clerk", "GMV by clerk · 导购 GMV", bars(rows, "clerk", (r) => Number(r.gmv)), { format: money }));
      out.push(barChart("commission-by-clerk", "Commission by clerk · 导购佣金", bars(rows, "clerk", (r) => Number(r.commission)),
        { format: money, color: "#16a34a" }));
      out.push(barChart("first-reply", "Median first reply by clerk · 首次回复时长中位数",
        bars(rows.filter((r) => r.first_reply_median_s !== null && r.first_reply_median_s !== undefined), "clerk",
          (r) => r.first_reply_median_s), { format: fmt.secs, color: "#d97706", note: "Shorter is better 越短越好", zeroIsData: true }));
    } else {
      out.push(chartError("gmv-by-clerk", "GMV by clerk · 导购 GMV", errorText(clerks.e)));
    }
    if (stores.ok) {
      out.push(barChart("gmv-by-store", "GMV by store · 门店 GMV", bars(stores.v.items, "store", (r) => Number(r.gmv)),
        { format: money, color: "#7c3aed" }));
    } else {
      out.push(chartError("gmv-by-store", "GMV by store · 门店 GMV", errorText(stores.e)));
    }
    if (camps) {
      if (camps.ok) {
        const rows = camps.v.items;
        const sum = (k) => rows.reduce((a, r) => a + (r[k] || 0), 0);
        out.push(funnelChart("campaigns-funnel", `Campaign funnel · 活动漏斗 (${rows.length} campaigns)`, [
          { label: "Audience 受众", value: sum("audience") }, { label: "Queued 已排队", value: sum("queued") },
          { label: "Sent 已发送", value: sum("sent") }, { label: "Delivered 已送达", value: sum("delivered") },
          { label: "Clicked 点击", value: sum("clicked") }, { label: "Redeemed 核销", value: sum("redeemed") },
          { label: "Orders 订单", value: sum("orders") }]));
      } else out.push(chartError("campaigns-funnel", "Campaign funnel · 活动漏斗", errorText(camps.e)));
    }
    if (funnel) {
      if (funnel.ok) {
        const f = funnel.v;
        out.push(pairChart("three-rates", "导购三律 · login, share, chat-to-deal", [
          { title: "Login rate 登录率", from: { label: "Clerks active 在职", value: f.clerks_active },
            to: { label: "Clerks working 工作", value: f.clerks_working }, rate: f.login_rate },
          { title: "Share rate 分享率", from: { label: "Clerks briefed 收到任务", value: f.clerks_briefed },
            to: { label: "Clerks sharing 转发", value: f.clerks_sharing }, rate: f.share_rate },
          { title: "Chat to deal 聊单率", from: { label: "Customers chatted 咨询", value: f.customers_chatted },
            to: { label: "Customers bought 成交", value: f.customers_bought }, rate: f.chat_to_deal }]));
      } else out.push(chartError("three-rates", "导购三律", errorText(funnel.e)));
    }
    replace(charts, out);
    if (clerks.ok) {
      replace(details, h("h3", {}, "Clerks 导购"), table([
        { label: "Clerk 导购", get: (r) => r.clerk }, { label: "Status", get: (r) => r.status },
        ...[["members_recruited", "Recruited 招募"], ["active_customers", "Active 活跃"], ["messages", "Messages 消息"],
          ["forwards", "Forwards 转发"], ["pushes_delivered", "Pushes 推送"], ["orders", "Orders 订单"]]
          .map(([k, l]) => ({ label: l, get: (r) => fmt.int(r[k]), num: true })),
        { label: "First reply 首回", get: (r) => fmt.secs(r.first_reply_median_s), num: true },
        { label: "GMV", get: (r) => fmt.money(r.gmv), num: true },
        { label: "Commission 佣金", get: (r) => fmt.money(r.commission), num: true }], clerks.v.items));
    } else replace(details);
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); load().catch((err) => { error.textContent = errorText(err); }); });
  by.addEventListener("change", () => load().catch((err) => { error.textContent = errorText(err); }));
  replace(ctx.root, h("h2", {}, "Dashboards 看板"), form, error, charts, details);
  await load();
}
