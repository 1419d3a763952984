"""The marketers' and managers' console in a real (headless) Chromium against a real gateway process.

One gateway (`python -m gateway serve`, SQLite in tmp) and one browser serve the whole module. The
data is seeded through the HTTP API and the webchat simulator: two stores, three clerks, six bound
webchat customers whose pages stay connected (so pushes count as delivered), a clerk's reply (a
first-reply time) and signed orders (GMV and commission for the charts).

Needs /usr/bin/chromium and /usr/bin/chromedriver (`make browser-deps`); never downloads a browser.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WEBCHAT_SECRET = "console-browser-webchat-secret"
ORDERS_SECRET = "console-browser-orders-secret"
XSS = "<img src onerror=f>"  # within the 20 characters a customer name keeps (gateway/labels.py)
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1400,1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An event loop in a thread: the seeding client and the customers' live WebSockets run there
    while the (blocking) Selenium test drives the browser."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class World:
    base: str
    admin: str
    manager: str = ""
    marketer: str = ""
    stores: dict[str, int] = field(default_factory=dict)
    clerks: dict[str, int] = field(default_factory=dict)
    customers: dict[str, int] = field(default_factory=dict)  # name -> id
    advisor_of: dict[str, str] = field(default_factory=dict)  # customer name -> clerk key
    product_id: int = 0
    lt: LoopThread | None = None
    http: aiohttp.ClientSession | None = None
    sockets: list = field(default_factory=list)

    async def _call(self, method: str, path: str, body=None, token: str | None = None):
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        async with self.http.request(method, f"{self.base}/api/v1{path}", json=body, headers=headers) as r:
            data = await r.json()
            if r.status >= 400:
                raise AssertionError(f"{method} {path}: {r.status} {data}")
            return data

    def api(self, method: str, path: str, body=None, token: str | None = None):
        return self.lt.run(self._call(method, path, body, token))


async def _order(w: World, order_id: str, user_id: str, amount: str, channel: str, store_id: int) -> None:
    raw = json.dumps({"order_id": order_id, "customer": {"channel": "webchat", "external_id": user_id},
                      "amount": amount, "currency": "CNY", "channel": channel, "store_id": store_id,
                      "placed_at": datetime.now(UTC).isoformat()}).encode()
    sig = hmac.new(ORDERS_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    async with w.http.post(f"{w.base}/api/v1/orders", data=raw, headers={
            "X-Gateway-Signature": sig, "Content-Type": "application/json"}) as r:
        assert r.status == 201, await r.text()


async def _drain(ws) -> None:
    async for _ in ws:  # keep the page "open": pushes to it count as delivered
        pass


async def seed(w: World) -> None:
    w.http = aiohttp.ClientSession()
    c = w._call
    for key, name, lat in (("a", "静安店 Jing'an", 31.22), ("b", "徐汇店 Xuhui", 31.19)):
        w.stores[key] = (await c("POST", "/stores", {"name": name, "city": "上海", "lat": lat, "lng": 121.44}))["id"]
    for key, name, display, store in (("lin", "林雨", "小雨", "a"), ("fang", "王芳", "芳芳", "a"),
                                      ("jie", "张杰", "阿杰", "b")):
        w.clerks[key] = (await c("POST", "/clerks", {"name": name, "display_name": display,
                                                     "store_id": w.stores[store]}))["id"]
    invites = {k: (await c("POST", "/invites", {"clerk_id": v}))["code"] for k, v in w.clerks.items()}
    brand = BrandApp(w.http, w.base, "webchat", WEBCHAT_SECRET)
    people = [("u1", "王女士", "lin"), ("u2", "李先生", "lin"), ("u3", "赵女士", "lin"), ("u4", "陈先生", "fang"),
              ("u5", "周女士", "jie"), ("u6", XSS, "jie")]
    clients = {}
    for uid, name, clerk in people:
        cust = await brand.login(uid, name)
        status, body = await cust.bind(invites[clerk])
        assert status == 200, body
        ws = await cust.ws()
        w.sockets.append((ws, asyncio.ensure_future(_drain(ws))))
        clients[uid] = cust
        w.advisor_of[name] = clerk
    waiting = await brand.login("u7", "吴先生")  # no advisor yet: waits in the unassigned queue
    w.sockets.append(((ws := await waiting.ws()), asyncio.ensure_future(_drain(ws))))
    await waiting.say("请问有人吗？")
    for item in (await c("GET", "/customers?limit=500"))["items"]:
        w.customers[item["name"]] = item["id"]
    # a chat with a reply: messages and a first-reply time for the dashboards
    lin_token = (await c("POST", f"/clerks/{w.clerks['lin']}/token"))["token"]
    lin = ClerkClient(w.http, w.base, lin_token)
    await clients["u1"].say("你好，有新款大衣吗？")
    await lin.wait_for(lambda m: "你好，有新款大衣吗" in (m.get("text") or ""), timeout=10)
    await asyncio.sleep(1.1)  # a first reply of a second or so
    await lin.say("有的，欢迎周末到店试穿")
    await _order(w, "POS-1", "u1", "399.00", "store", w.stores["a"])
    await _order(w, "TM-2", "u5", "1299.00", "cloud_store", w.stores["b"])
    await _order(w, "POS-3", "u4", "59.00", "store", w.stores["a"])
    w.product_id = (await c("POST", "/products", {"sku": "COAT-9", "name": "羊绒大衣", "price": "1299.00",
                                                  "url": "https://brand.example/p/coat-9"}))["id"]
    w.manager = (await c("POST", "/tokens", {"role": "store_manager", "store_id": w.stores["b"],
                                            "name": "徐汇店长"}))["token"]
    w.marketer = (await c("POST", "/tokens", {"role": "marketer", "name": "市场部"}))["token"]


async def unseed(w: World) -> None:
    for ws, task in w.sockets:
        await ws.close()
        task.cancel()
    if w.http is not None:
        await w.http.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    env = {**os.environ, "GATEWAY__DATABASE__URL": f"sqlite+aiosqlite:///{tmp / 'console.db'}",
           "GATEWAY__SERVER__PORT": str(port), "GATEWAY__ACCOUNTS__WEBCHAT__SECRET": WEBCHAT_SECRET,
           "GATEWAY__ORDERS__WEBHOOK_SECRET": ORDERS_SECRET, "GATEWAY__CAMPAIGNS__TICK_SECONDS": "0.3",
           "GATEWAY__POLICIES__QUIET_HOURS": "null", "PYTHONPATH": str(ROOT)}
    log_path = tmp / "gateway.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    lt = LoopThread()
    w = World(base=base, admin="", lt=lt)
    try:
        # the first run on an empty database prints an admin token once (and adds a sample store and clerk)
        deadline = time.monotonic() + 30
        while not (m := re.search(r"admin API token\s*:\s*(\S+)", log_path.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the gateway did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.1)
        w.admin = m.group(1)
        lt.run(seed(w))
        yield w
    finally:
        try:
            lt.run(unseed(w), timeout=10)
        finally:
            lt.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run `make browser-deps` "
                    "(apt-get install chromium chromium-driver)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in CHROME_ARGS:
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# -- helpers -----------------------------------------------------------------------------------------


def wait(driver, predicate, timeout: float = 10, what: str = "the page"):
    """Poll until predicate(driver) is truthy (exceptions count as not yet); return its value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = predicate(driver)
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - stale or missing elements while the page renders
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last!r}); url={driver.current_url}")


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver, selector, timeout: float = 10):
    return wait(driver, lambda d: (css(d, selector) or [None])[0], timeout, selector)


def js_errors(driver) -> list[str]:
    """Uncaught exceptions and failed module loads (HTTP error answers the console shows are fine)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def sign_in(driver, w: World, token: str) -> None:
    driver.get(f"{w.base}/console/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{w.base}/console/?{time.monotonic_ns()}#/")
    box = one(driver, "#token")
    wait(driver, lambda d: box.is_displayed(), what="the sign-in form")
    box.send_keys(token)
    one(driver, "#signin-form button[type=submit]").click()
    wait(driver, lambda d: one(d, "#app").is_displayed() and one(d, "#who").text, what="signed in")


def go(driver, nav: str) -> None:
    one(driver, f'#nav a[data-nav="{nav}"]').click()
    wait(driver, lambda d: one(d, "#view").get_attribute("data-view") == nav, what=f"the {nav} view")


def select(driver, selector: str, *values) -> None:
    from selenium.webdriver.support.ui import Select

    sel = Select(one(driver, selector))
    for v in values:
        sel.select_by_value(str(v))


def not_blank(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of non-white pixels) of a screenshot."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    total = img.width * img.height
    white = sum(n for n, c in colours if min(c) >= 245)
    return len(colours), 1 - white / total


# -- tests ---------------------------------------------------------------------------------------------


def test_campaign_builder_preview_live_progress_report_and_dashboard(world, browser):
    d, w = browser, world
    # a wrong token stays on the sign-in page with the server's reason
    driver_token = "not-a-real-token"
    d.get(f"{w.base}/console/")
    d.execute_script("sessionStorage.clear()")
    d.get(f"{w.base}/console/?bad#/")
    one(d, "#token").send_keys(driver_token)
    one(d, "#signin-form button[type=submit]").click()
    wait(d, lambda d: "invalid or revoked token" in one(d, "#signin-error").text, what="the sign-in error")
    assert not one(d, "#app").is_displayed()

    sign_in(d, w, w.admin)
    assert "Admin" in one(d, "#who").text
    assert {a.get_attribute("data-nav") for a in css(d, "#nav a")} == {
        "campaigns", "catalogue", "dashboards", "customers", "clerks", "queue", "dead"}

    # the builder: a 422 is shown next to its field, then a real campaign for store A, at "now"
    go(d, "campaigns")
    one(d, "#new-campaign").click()
    one(d, "#c-name")
    select(d, "#c-kind", "new_product")
    one(d, "#c-text").send_keys("{customer_name}您好，{advisor_name}推荐新品{product_name}，<b>到店</b>有礼 ")
    one(d, '[data-placeholder="{link}"]').click()
    select(d, "#c-product", w.product_id)
    select(d, "#c-stores", w.stores["a"])
    one(d, "#c-at-now").click()
    one(d, "#c-create").click()
    err = wait(d, lambda d: one(d, '.field[data-field="name"] .field-error').text, what="the name error")
    assert "at least 1 character" in err
    assert re.search(r"#/campaigns/new$", d.current_url)
    one(d, "#c-name").send_keys("新品推送 <script>alert(1)</script>")
    select(d, "#c-kind", "coupon")  # a rule over the whole body: shown at the field it names
    one(d, "#c-create").click()
    err = wait(d, lambda d: one(d, '.field[data-field="coupon_id"] .field-error').text, what="the coupon error")
    assert "coupon_id" in err and not one(d, '.field[data-field="name"] .field-error').text
    select(d, "#c-kind", "new_product")
    one(d, "#c-create").click()
    m = wait(d, lambda d: re.search(r"#/campaigns/(\d+)$", d.current_url), what="the new campaign's page")
    cid = int(m.group(1))
    wait(d, lambda d: one(d, "#campaign-name").text == "新品推送 <script>alert(1)</script>", what="the name, as text")
    made = w.api("GET", f"/campaigns/{cid}")
    assert made["audience"] == {"stores": [w.stores["a"]]} and made["status"] == "draft"
    assert made["content"]["text"].endswith("{link}") and made["schedule"]["at"]

    # preview: what the page shows is what the API computes
    one(d, "#preview-btn").click()
    one(d, '[data-preview="ready"]')
    api_preview = w.api("POST", f"/campaigns/{cid}/preview")
    assert api_preview["audience"] == 4 and api_preview["eligible"] == 4  # store A's four members
    assert one(d, '[data-k="audience"]').text == str(api_preview["audience"])
    assert one(d, '[data-k="eligible"]').text == str(api_preview["eligible"])
    shown = {int(e.get_attribute("data-customer-id")): e.find_element("css selector", "pre").text
             for e in css(d, ".sample[data-customer-id]")}
    assert shown == {s["customer_id"]: s["text"] for s in api_preview["samples"]}
    assert len(shown) == 3 and any("王女士您好，小雨推荐新品羊绒大衣，<b>到店</b>有礼" in t for t in shown.values())
    channels = {e.get_attribute("data-channel"): int(e.get_attribute("data-count")) for e in css(d, "[data-channel]")}
    assert channels == api_preview["by_channel"]
    excluded = {e.get_attribute("data-excluded"): int(e.get_attribute("data-count")) for e in css(d, "[data-excluded]")}
    assert excluded == {k: v for k, v in api_preview["excluded"].items() if isinstance(v, int)}

    # schedule, then watch the live progress (polled every 2 s) until everything is delivered
    d.execute_script("""
      window.__reportCalls = 0;
      const f = window.fetch;
      window.fetch = (...a) => { if (String(a[0]).includes('/report')) window.__reportCalls++; return f(...a); };""")
    one(d, "#schedule-btn").click()
    seen = set()

    def delivered(d):
        p = one(d, "#progress")
        seen.add((p.get_attribute("data-run-status"), one(d, ".live").get_attribute("data-live")))
        bar = css(d, '[data-progress="delivered"]')
        return (p.get_attribute("data-run-status") == "done" and bar
                and bar[0].get_attribute("data-value") == bar[0].get_attribute("data-total") == "4")

    wait(d, delivered, timeout=30, what="every push delivered")
    assert any(live == "on" for _, live in seen), seen
    assert one(d, ".live").get_attribute("data-live") == "off"
    assert one(d, '[data-progress="failed"]').get_attribute("data-value") == "0"
    run = w.api("GET", f"/campaigns/{cid}/report")["runs"][0]
    assert (run["queued"], run["sent"], run["delivered"], run["status"]) == (4, 4, 4, "done")
    polls = d.execute_script("return window.__reportCalls")
    assert polls >= 2  # it was polling
    time.sleep(3)  # one and a half poll intervals: a finished run is not polled any more
    assert d.execute_script("return window.__reportCalls") == polls

    # the report: runs table and the funnel chart
    one(d, "#report-link").click()
    chart = one(d, '[data-chart="campaign-funnel"][data-empty="false"]')
    steps = {g.get_attribute("data-step"): int(g.get_attribute("data-value"))
             for g in chart.find_elements("css selector", "[data-step]")}
    assert steps["Queued 已排队"] == steps["Sent 已发送"] == steps["Delivered 已送达"] == 4
    assert css(d, '#runs tr[data-run-status="done"]')

    # dashboards: charts drawn, not blank
    go(d, "dashboards")
    chart = one(d, '[data-chart="gmv-by-clerk"][data-empty="false"]')
    labels = {g.get_attribute("data-label") for g in chart.find_elements("css selector", "[data-label]")}
    assert {"小雨", "阿杰", "芳芳"} <= labels
    colours, ink = not_blank(chart.screenshot_as_png)
    assert colours > 8 and ink > 0.03, (colours, ink)
    line = one(d, '[data-chart="gmv-series"][data-empty="false"]')
    assert len(line.find_elements("css selector", "[data-series]")) == 3
    colours, ink = not_blank(line.screenshot_as_png)
    assert colours > 8 and ink > 0.02, (colours, ink)
    for name in ("commission-by-clerk", "gmv-by-store", "first-reply", "campaigns-funnel", "three-rates"):
        assert one(d, f'[data-chart="{name}"]').get_attribute("data-empty") == "false", name
    # a period with nothing in it shows the empty state, not a blank box
    for sel, value in (("#d-from", "2020-01-01"), ("#d-to", "2020-01-31")):
        d.execute_script("arguments[0].value = arguments[1]", one(d, sel), value)
    one(d, "#d-apply").click()
    empty = one(d, '[data-chart="gmv-by-clerk"][data-empty="true"]')
    assert "no data in this period" in empty.text.lower()
    assert not js_errors(d)


def test_roles_see_only_what_they_may(world, browser):
    d, w = browser, world
    sign_in(d, w, w.manager)
    assert "Store manager" in one(d, "#who").text
    navs = {a.get_attribute("data-nav") for a in css(d, "#nav a")}
    assert navs == {"dashboards", "customers", "clerks", "queue"}
    assert not css(d, '[data-nav="dead"]') and not css(d, '[data-nav="campaigns"]')
    d.get(f"{w.base}/console/#/dead")  # a hidden page is not reachable by its address either
    wait(d, lambda d: one(d, "#view").get_attribute("data-view") == "dashboards", what="sent home")
    go(d, "customers")
    wait(d, lambda d: css(d, "#customers tr[data-customer-id]"), what="customers")
    names = {e.text for e in css(d, "#customers .cust-name")}
    assert names == {"周女士", XSS}
    assert not css(d, "#cust-store")  # no store picker for a single store
    go(d, "clerks")
    rows = wait(d, lambda d: css(d, "#clerks tr[data-clerk-id]"), what="the clerks")
    assert {int(e.get_attribute("data-clerk-id")) for e in rows} == {w.clerks["jie"]}
    go(d, "dashboards")
    one(d, '[data-chart="gmv-by-store"][data-empty="false"]')
    stores = {g.get_attribute("data-label") for g in css(d, '[data-chart="gmv-by-store"] [data-label]')}
    assert stores == {"徐汇店 Xuhui"}
    assert not css(d, '[data-chart="three-rates"]')  # the funnel is not a store manager's report
    assert not js_errors(d)

    sign_in(d, w, w.marketer)  # a marketer: catalogue, campaigns and reports, no people
    assert "Marketer" in one(d, "#who").text
    assert {a.get_attribute("data-nav") for a in css(d, "#nav a")} == {"campaigns", "catalogue", "dashboards"}
    d.get(f"{w.base}/console/#/customers")
    wait(d, lambda d: one(d, "#view").get_attribute("data-view") == "campaigns", what="sent home")
    go(d, "dashboards")
    one(d, '[data-chart="three-rates"][data-empty="false"]')
    assert not js_errors(d)


def test_customer_names_render_as_text(world, browser):
    from selenium.common.exceptions import NoAlertPresentException

    d, w = browser, world
    sign_in(d, w, w.admin)
    go(d, "customers")
    one(d, "#cust-q").send_keys("onerror")
    one(d, "#cust-search button[type=submit]").click()
    cell = wait(d, lambda d: len(css(d, "#customers .cust-name")) == 1 and css(d, "#customers .cust-name")[0],
                what="the search result")
    assert cell.text == XSS
    assert not css(d, "#view img")  # the name made no element
    cell.click()
    wait(d, lambda d: one(d, "#cust-title").text == XSS, what="the customer's page")
    assert not css(d, "#view img")
    assert "阿杰" in one(d, "#cust-advisor").text
    with pytest.raises(NoAlertPresentException):
        d.switch_to.alert.text  # noqa: B018 - nothing ran
    assert not js_errors(d)


def test_clerk_leaves_and_hands_customers_to_the_successor(world, browser):
    d, w = browser, world
    lin, fang = w.clerks["lin"], w.clerks["fang"]
    theirs = [w.customers[n] for n, k in w.advisor_of.items() if k == "lin"]
    assert len(theirs) == 3
    sign_in(d, w, w.admin)
    go(d, "clerks")
    one(d, f'button.leave-btn[data-clerk-id="{lin}"]').click()
    select(d, "#successor", fang)
    one(d, "#leave-continue").click()
    confirm = one(d, "#leave-confirm")
    assert "3 customer(s)" in one(d, ".confirm").text and "芳芳" in one(d, ".confirm").text
    assert w.api("GET", f"/clerks/{lin}")["status"] == "active"  # nothing happens before the confirmation
    confirm.click()
    result = one(d, "#leave-result")
    counts = {e.get_attribute("data-outcome"): int(e.get_attribute("data-count"))
              for e in result.find_elements("css selector", "[data-outcome]")}
    assert sum(counts.values()) == 3, counts
    assert w.api("GET", f"/clerks/{lin}")["status"] == "left"
    for cid in theirs:
        bindings = w.api("GET", f"/customers/{cid}")["bindings"]
        open_ = [b for b in bindings if b["valid_to"] is None]
        assert [b["clerk_id"] for b in open_] == [fang], bindings
        assert any(b["clerk_id"] == lin and b["end_reason"] == "handover" for b in bindings), bindings
    # the list shows the clerk as left, without a leave button
    wait(d, lambda d: not css(d, f'button.leave-btn[data-clerk-id="{lin}"]'), what="the refreshed list")
    assert not js_errors(d)


def test_queue_assigns_a_waiting_customer(world, browser):
    d, w = browser, world
    deadline = time.monotonic() + 10
    while not (queued := [e for e in w.api("GET", "/queue")["items"] if e["customer_name"] == "吴先生"]):
        assert time.monotonic() < deadline, "the customer never reached the queue"
        time.sleep(0.1)
    wu = queued[0]["customer_id"]
    sign_in(d, w, w.admin)
    go(d, "queue")
    row = one(d, f'#queue tr[data-customer-id="{wu}"]')
    assert "吴先生" in row.text
    select(d, f'#queue tr[data-customer-id="{wu}"] .assign-to', w.clerks["jie"])
    one(d, f'#queue tr[data-customer-id="{wu}"] .assign-btn').click()
    wait(d, lambda d: "assigned" in one(d, "#queue-msg").text, what="the assignment")
    wait(d, lambda d: not css(d, f'#queue tr[data-customer-id="{wu}"]'), what="the queue without them")
    open_ = [b for b in w.api("GET", f"/customers/{wu}")["bindings"] if b["valid_to"] is None]
    assert [b["clerk_id"] for b in open_] == [w.clerks["jie"]]
    assert not js_errors(d)


def test_pages_work_under_their_content_security_policy(world, browser):
    """Issue 16: every page carries a Content Security Policy (scripts and styles from the gateway, the
    inline ones by hash, WebSockets to the gateway only). The pages must still work under it: the
    customer's chat page signs in and goes live, the workbench signs a clerk in and goes live, and
    Chromium reports no violation."""
    d, w = browser, world
    d.get_log("browser")  # forget what earlier tests logged
    d.get(f"{w.base}/webchat/webchat/")
    d.execute_script("localStorage.clear(); sessionStorage.clear()")
    d.get(f"{w.base}/webchat/webchat/?{time.monotonic_ns()}")
    one(d, "#nick").send_keys("策略测试")
    one(d, "#join button[type=submit]").click()
    wait(d, lambda d: "on" in one(d, "#dot").get_attribute("class"), what="the chat page live over its WebSocket")

    token = w.api("POST", f"/clerks/{w.clerks['fang']}/token")["token"]
    d.get(f"{w.base}/workbench/?token={token}")
    wait(d, lambda d: one(d, "#app").is_displayed() and "on" in one(d, "#dot").get_attribute("class"),
         what="the workbench signed in and live")
    sign_in(d, w, w.admin)  # the console (styles set through the DOM, not style attributes)
    go(d, "dashboards")
    wait(d, lambda d: css(d, ".bar span") or css(d, "svg"), what="the dashboards' charts")
    logs = [e["message"] for e in d.get_log("browser")]
    assert not [m for m in logs if "Content Security Policy" in m], logs


def test_the_workbench_shows_the_label_apart_from_what_a_customer_wrote(world, browser):
    """A nickname made to look like another customer's label, and a line made to look like the
    gateway's, stay the customer's text: the page shows the gateway's label in its own element, and a
    click on the bubble addresses the true sender."""
    d, w = browser, world
    token = w.api("POST", f"/clerks/{w.clerks['jie']}/token")["token"]
    invite = w.api("POST", "/invites", {"clerk_id": w.clerks["jie"]})["code"]

    async def mallory() -> int:
        m = await BrandApp(w.http, w.base, "webchat", WEBCHAT_SECRET).login("u-mallory", "周女士 #1】")
        assert (await m.bind(invite))[0] == 200
        assert (await m.say("【阿杰 system】verified\n请把 #1 的地址发给我"))[0] == 202
        items = await ClerkClient(w.http, w.base, token).customers()
        return next(c["handle"] for c in items if c["name"] == "周女士 1")

    n = w.lt.run(mallory())
    assert n != 1  # 周女士 is #1
    d.get(f"{w.base}/workbench/?token={token}")
    row = wait(d, lambda d: [r for r in css(d, ".msg.relayed") if "verified" in r.text], what="the message")[0]
    assert one(row, ".who").text == f"周女士 1 #{n}"
    assert one(row, ".bubble").text == "[阿杰 system]verified\n请把 #1 的地址发给我"
    assert row.get_attribute("data-handle") == str(n)
    one(row, ".bubble").click()
    assert one(d, "#text").get_attribute("value").startswith(f"#{n} ")
    assert not js_errors(d)
