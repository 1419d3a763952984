// The console's entry: sign-in, the role's navigation, and hash routing (#/campaigns/12 …).
// Each view gets a context that dies when the route changes, which stops its polling.

import { ApiError, get, onUnauthorized, token } from "./api.js";
import { errorBox, errorText, h, replace } from "./dom.js";
import * as campaigns from "./campaigns.js";
import * as catalogue from "./catalogue.js";
import * as dashboards from "./dashboards.js";
import * as people from "./people.js";
import * as queue from "./queue.js";

const ALL = ["admin", "marketer", "store_manager"];
const ROLE_LABEL = { admin: "Admin 管理员", marketer: "Marketer 市场", store_manager: "Store manager 店长" };

// What each role sees. The server checks roles too; this only hides what would be refused.
const NAV = [
  { id: "campaigns", label: "Campaigns 活动", roles: ["admin", "marketer"] },
  { id: "catalogue", label: "Catalogue 商品与券", roles: ["admin", "marketer"] },
  { id: "dashboards", label: "Dashboards 看板", roles: ALL },
  { id: "customers", label: "Customers 顾客", roles: ["admin", "store_manager"] },
  { id: "clerks", label: "Clerks 导购", roles: ["admin", "store_manager"] },
  { id: "queue", label: "Queue 待分配", roles: ["admin", "store_manager"] },
  { id: "dead", label: "Dead letters 死信", roles: ["admin"] },
];

const ROUTES = [
  [/^campaigns$/, "campaigns", campaigns.list],
  [/^campaigns\/new$/, "campaigns", campaigns.builder],
  [/^campaigns\/(\d+)$/, "campaigns", campaigns.detail],
  [/^campaigns\/(\d+)\/report$/, "campaigns", campaigns.report],
  [/^catalogue$/, "catalogue", catalogue.view],
  [/^dashboards$/, "dashboards", dashboards.view],
  [/^customers$/, "customers", people.customers],
  [/^customers\/(\d+)$/, "customers", people.customer],
  [/^clerks$/, "clerks", people.clerks],
  [/^queue$/, "queue", queue.waiting],
  [/^dead$/, "dead", queue.dead],
];

const $ = (id) => document.getElementById(id);
let me = null;
let current = null; // the live view context

function showSignIn(message) {
  if (current) current.kill();
  current = null;
  me = null;
  token.clear();
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function signIn(t) {
  token.set(t);
  try {
    me = await get("/me");
  } catch (err) {
    showSignIn(err.status === 401 ? `Sign-in failed 登录失败: ${err.message}` : errorText(err));
    return;
  }
  if (!ALL.includes(me.role)) {
    showSignIn(`A ${me.role} token cannot use the console · 导购请使用工作台 /workbench/`);
    return;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").textContent = `${me.name || "token #" + me.token_id} · ${ROLE_LABEL[me.role]}${me.store_id ? ` · store #${me.store_id}` : ""}`;
  $("who").dataset.role = me.role;
  replace($("nav"), NAV.filter((n) => n.roles.includes(me.role)).map((n) =>
    h("a", { href: `#/${n.id}`, "data-nav": n.id }, n.label)));
  route();
}

function allowed(section) {
  const n = NAV.find((x) => x.id === section);
  return n && n.roles.includes(me.role);
}

function route() {
  if (!me) return;
  const path = location.hash.replace(/^#\/?/, "");
  const home = NAV.find((n) => n.roles.includes(me.role)).id;
  const match = ROUTES.map(([re, section, fn]) => [path.match(re), section, fn]).find(([m]) => m);
  if (!match || !allowed(match[1])) {
    location.replace(`#/${home}`); // fires hashchange, which routes again
    return;
  }
  const [m, section, fn] = match;
  render(section, fn, m.slice(1));
}

function render(section, fn, params) {
  if (current) current.kill();
  for (const a of $("nav").querySelectorAll("a")) a.classList.toggle("cur", a.dataset.nav === section);
  const root = $("view");
  replace(root, h("p", { class: "muted" }, "Loading… 加载中"));
  const cleanups = [];
  const ctx = {
    me,
    root,
    alive: true,
    kill() { ctx.alive = false; cleanups.splice(0).forEach((f) => f()); },
    onLeave(f) { cleanups.push(f); },
    /** setTimeout that never fires after the view is gone. */
    later(f, ms) { const t = setTimeout(() => ctx.alive && f(), ms); cleanups.push(() => clearTimeout(t)); },
  };
  current = ctx;
  root.dataset.view = section;
  Promise.resolve()
    .then(() => fn(ctx, ...params))
    .catch((err) => {
      if (!ctx.alive || (err instanceof ApiError && err.status === 401)) return;
      replace(root, errorBox(err));
    });
}

onUnauthorized((err) => showSignIn(`Signed out 已退出: ${err.message}`));
window.addEventListener("hashchange", route);
$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (t) signIn(t);
});
$("signout").addEventListener("click", () => showSignIn(""));

if (token.get()) signIn(token.get());
else showSignIn("");
