"""`gateway demo`: the story end to end on a temporary SQLite and the built-in simulators.

A store and a clerk are created through the admin API, a customer binds through an invite from the
brand's app, they chat both ways, the customer opts out; then a summary table is printed. The
clerk works in the web workbench, or with `--clerk-on dingtalk|wecom` in DingTalk or WeCom (the
platform's API simulator, with callbacks signed and encrypted the real way; on WeCom a WeChat user
also adds the clerk through the invite's contact QR and gets the welcome). Any failed step makes
the command exit non-zero.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import func, select

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from gateway.app import create_app
from gateway.config import build_config
from gateway.db import upgrade
from gateway.models import Binding, ChatMessage, Interaction, Outbox
from gateway.models import Identity as IdentityRow
from gateway.runtime import Gateway
from gateway.tokens import create_token


class StepFailed(Exception):
    pass


def _step(n: int, text: str) -> None:
    print(f"  {n:>2}. {text}", flush=True)


async def _expect(resp: aiohttp.ClientResponse, status: int) -> dict:
    async with resp:
        body = await resp.json()
        if resp.status != status:
            raise StepFailed(f"{resp.method} {resp.url.path}: expected {status}, got {resp.status} {body}")
        return body


class DingTalkClerk:
    """The clerk on (simulated) DingTalk: writes to the robot, reads what the robot sent them."""

    def __init__(self, sim, http: aiohttp.ClientSession, server: str, user: str):
        self.sim, self.http, self.server, self.user = sim, http, server, user
        self._seen = 0

    async def say(self, text: str) -> None:
        headers, body = self.sim.robot_callback(self.user, text, nick="林小雨")
        async with self.http.post(f"{self.server}/callbacks/dingtalk", data=body, headers=headers) as resp:
            if resp.status != 200:
                raise StepFailed(f"DingTalk callback refused: {resp.status} {await resp.text()}")

    async def wait_for(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inbox = self.sim.robot_inbox.get(self.user, [])
            for m in inbox[self._seen:]:
                self._seen += 1
                p = m["msgParam"]
                item = {"text": p.get("content") or p.get("text") or p.get("photoURL") or "", "msg_key": m["msgKey"]}
                if predicate(item):
                    return item
            await asyncio.sleep(0.05)
        raise StepFailed("the clerk's DingTalk received nothing matching in time")


class WeComClerk(DingTalkClerk):
    """The clerk on (simulated) WeCom: writes to the brand's app, reads the app messages they got."""

    async def say(self, text: str) -> None:
        query, body = self.sim.message_callback(self.user, text)
        async with self.http.post(f"{self.server}/callbacks/wecom", params=query, data=body) as resp:
            if resp.status != 200:
                raise StepFailed(f"WeCom callback refused: {resp.status} {await resp.text()}")

    async def wait_for(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [m for m in self.sim.delivered if m["user"] == self.user]
            for m in mine[self._seen:]:
                self._seen += 1
                item = {"text": m["payload"].get("content") or m["payload"].get("title") or "", "msg_key": m["msgtype"]}
                if predicate(item):
                    return item
            await asyncio.sleep(0.05)
        raise StepFailed("the clerk's WeCom received nothing matching in time")


async def wechat_contact_scene(gw: Gateway, server: str, http: aiohttp.ClientSession, sim, code: str) -> None:
    """A WeChat user scans the clerk's WeCom contact QR for the invite: bound, welcomed within 20 s."""
    async with http.get(f"{server}/wecom/wecom/contact/{code}", allow_redirects=False) as resp:
        if resp.status != 302:
            raise StepFailed(f"contact QR: expected 302, got {resp.status}")
    query, body = sim.add_external_contact("clerk001", "wmDemoCustomer2", state=f"gw:{code}", name="陈先生")
    async with http.post(f"{server}/callbacks/wecom", params=query, data=body) as resp:
        if resp.status != 200:
            raise StepFailed(f"add_external_contact refused: {resp.status}")
    deadline = time.monotonic() + 5
    while not sim.welcomes.get("wmDemoCustomer2"):
        if time.monotonic() > deadline:
            raise StepFailed("no welcome reached the WeChat customer")
        await asyncio.sleep(0.05)
    text = sim.welcomes["wmDemoCustomer2"][0]["text"]["content"]
    _step(8, f"WeChat user 陈先生 added the clerk by QR (state gw:{code}): bound; welcome: {text[:20]}…")


async def campaign_scene(gw: Gateway, server: str, http: aiohttp.ClientSession, h: dict, code: str, brand,
                         first: int) -> int:
    """A marketer's coupon push and new-product push, at once, with their delivery reports."""
    api = f"{server}/api/v1"
    li = await brand.login("demo-customer-2", "李先生")
    await li.bind(code)
    product = await _expect(await http.post(f"{api}/products", headers=h, json={
        "sku": "COAT-001", "name": "羊绒大衣", "price": "1299.00", "url": "https://brand.example/p/coat-001"}), 201)
    coupon = await _expect(await http.post(f"{api}/coupons", headers=h, json={
        "name": "满500减100", "value": "100.00", "valid_from": "2026-01-01T00:00:00+08:00",
        "valid_to": "2027-01-01T00:00:00+08:00", "generate": 100}), 201)
    soon = (gw.clock.now() + timedelta(seconds=1)).isoformat()
    made = []
    for body in ({"name": "会员专享券", "kind": "coupon", "coupon_id": coupon["id"], "schedule": {"at": soon},
                  "content": {"text": "{customer_name}您好，{advisor_name}为您留了一张满500减100券：{coupon_code}"}},
                 {"name": "新品：羊绒大衣", "kind": "new_product", "schedule": {"at": soon},
                  "content": {"text": "{advisor_name}：新品{product_name}到店，点此查看 {link}", "product_id": product["id"]}}):
        c = await _expect(await http.post(f"{api}/campaigns", headers=h, json=body), 201)
        preview = await _expect(await http.post(f"{api}/campaigns/{c['id']}/preview", headers=h), 200)
        await _expect(await http.post(f"{api}/campaigns/{c['id']}/schedule", headers=h), 200)
        made.append((c, preview))
    reports = []
    for c, _ in made:
        for _ in range(100):
            rep = await _expect(await http.get(f"{api}/campaigns/{c['id']}/report", headers=h), 200)
            run = rep["runs"][0] if rep["runs"] else {}
            if run.get("status") == "done":
                break
            await asyncio.sleep(0.1)
        else:
            raise StepFailed(f"campaign {c['name']} did not finish: {rep}")
        reports.append(run)
    seen: list[str] = []  # both pushes may arrive in one poll: collect, then look
    for _ in range(100):
        seen += [m["text"] for m in await li.fetch() if m["direction"] == "out"]
        if any("满500减100券" in t for t in seen) and any("羊绒大衣" in t for t in seen):
            break
        await asyncio.sleep(0.05)
    else:
        raise StepFailed(f"李先生 did not receive both pushes: {seen}")
    got = next(t for t in seen if "满500减100券" in t)
    _step(first, f"two pushes scheduled and sent; 李先生 got: {got[:30]}…")
    for i, ((c, preview), run) in enumerate(zip(made, reports, strict=True), 1):
        _step(first + i, f"report 「{c['name']}」: audience {run['audience']}, sent {run['sent']}, "
                         f"excluded {run['excluded'] or '—'} (preview said {preview['eligible']} eligible)")
    return first + len(made) + 1


async def clerk_leaves(gw: Gateway, server: str, http: aiohttp.ClientSession, h: dict, store_id: int, clerk_id: int,
                       customer, sim, clerk_on: str, first: int) -> None:
    """The brand keeps the relationship: 小林 leaves, 芳芳 takes over, the customer carries on."""
    api = f"{server}/api/v1"
    work_ids = {clerk_on: "clerk002"} if clerk_on == "wecom" else {}
    fang = await _expect(await http.post(f"{api}/clerks", headers=h, json={
        "name": "王芳", "display_name": "芳芳", "store_id": store_id, "work_ids": work_ids}), 201)
    if clerk_on == "wecom":  # 芳芳 works in WeCom too
        fang_wb = WeComClerk(sim, http, server, "clerk002")
    else:
        token = (await _expect(await http.post(f"{api}/clerks/{fang['id']}/token", headers=h), 201))["token"]
        fang_wb = ClerkClient(http, server, token)
    left = await _expect(await http.post(f"{api}/clerks/{clerk_id}/leave", headers=h,
                                         json={"successor_id": fang["id"]}), 200)
    outcomes = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in left["customers"].items())
    intro = await customer.wait_for(lambda m: m["sender"] == {"name": "芳芳"})
    _step(first, f"小林 left; customers handed to 芳芳 ({outcomes}); the customer hears: {intro['text'][:18]}…")
    await customer.say("好的芳芳，那双37码周六来取")
    seen = await fang_wb.wait_for(lambda m: "周六来取" in m["text"])
    await fang_wb.say("好的，周六见！")
    await customer.wait_for(lambda m: m["text"] == "好的，周六见！" and m["sender"] == {"name": "芳芳"})
    _step(first + 1, f"the conversation carries on: 芳芳 sees {seen['text']} and answers")
    if clerk_on == "wecom":  # the WeChat contact moves when WeCom says the transfer is done
        for _ in range(50):
            if sim.transfers:
                break
            await asyncio.sleep(0.05)
        sim.settle_all(1)
        await gw.adapters["wecom"].poll_once()
        for _ in range(100):
            async with gw.db() as s:
                moved = (await s.execute(
                    select(Binding.clerk_id).join(IdentityRow, IdentityRow.customer_id == Binding.customer_id)
                    .where(IdentityRow.external_id == "wmDemoCustomer2", Binding.valid_to.is_(None)))).scalar()
            if moved == fang["id"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise StepFailed("the WeChat contact's binding did not move after the transfer")
        _step(first + 2, "WeCom reported the contact's transfer done: 陈先生's binding moved to 芳芳")


ORDERS_SECRET = secrets.token_hex(16)


async def orders_scene(gw: Gateway, server: str, http: aiohttp.ClientSession, served, first: int) -> None:
    """Sales come in from the POS and the cloud store: each is credited to the advisor the customer
    had when they bought — 小林 for the order placed before she left, 芳芳 after; a refund reverses."""
    import hashlib
    import hmac
    import json as _json

    async def signed(path: str, body: dict) -> dict:
        raw = _json.dumps(body, ensure_ascii=False).encode()
        sig = hmac.new(ORDERS_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        async with http.post(f"{server}/api/v1{path}", data=raw, headers={
                "X-Gateway-Signature": sig, "Content-Type": "application/json"}) as resp:
            out = await resp.json()
            if resp.status not in (200, 201):
                raise StepFailed(f"{path}: {resp.status} {out}")
            return out

    now = gw.clock.now()
    before = await signed("/orders", {"order_id": "POS-20261101-001", "amount": "399.00", "channel": "store",
                                      "customer": {"channel": "webchat", "external_id": "demo-customer-1"},
                                      "placed_at": served.isoformat()})
    after = await signed("/orders", {"order_id": "TM-88001", "amount": "1299.00", "channel": "cloud_store",
                                     "customer": {"channel": "webchat", "external_id": "demo-customer-1"},
                                     "placed_at": (now + timedelta(seconds=1)).isoformat()})
    await signed("/orders/TM-88001/refund", {"amount": "299.00", "refunded_at": (now + timedelta(seconds=2)).isoformat()})
    from gateway import attribution

    await attribution.sync_changed(gw, now - timedelta(days=1))  # member bounties follow bindings
    names = {before["clerk_id"]: "小林", after["clerk_id"]: "芳芳"}
    _step(first, f"POS order 399.00 placed while 小林 was the advisor → credited to {names[before['clerk_id']]}; "
                 f"cloud-store order 1299.00 after the handover → {names[after['clerk_id']]}; a 299.00 refund reverses")


async def story(gw: Gateway, server: str, http: aiohttp.ClientSession, secret: str, sim=None,
                clerk_on: str = "workbench") -> dict:
    async with gw.db() as s:
        _, admin = await create_token(s, "admin", name="demo")
        await s.commit()
    h = {"Authorization": f"Bearer {admin}"}
    api = f"{server}/api/v1"

    store = await _expect(await http.post(f"{api}/stores", json={"name": "静安嘉里店", "city": "上海"}, headers=h), 201)
    work_ids = {clerk_on: "clerk001"} if sim else {}
    clerk = await _expect(await http.post(f"{api}/clerks", headers=h, json={
        "name": "林小雨", "display_name": "小林", "store_id": store["id"], "work_ids": work_ids}), 201)
    where = f"{clerk_on} user clerk001" if sim else "the web workbench"
    _step(1, f"store #{store['id']} {store['name']} and clerk #{clerk['id']} {clerk['display_name']} ({where}) created")
    if sim:
        wb = (WeComClerk if clerk_on == "wecom" else DingTalkClerk)(sim, http, server, "clerk001")
    else:
        token = (await _expect(await http.post(f"{api}/clerks/{clerk['id']}/token", headers=h), 201))["token"]
        wb = ClerkClient(http, server, token)
    invite = await _expect(await http.post(f"{api}/invites", headers=h, json={"clerk_id": clerk["id"], "source": "counter"}), 201)
    _step(2, f"invite {invite['code']} → {invite['url']}")

    brand = BrandApp(http, server, "webchat", secret)
    customer = await brand.login("demo-customer-1", "王女士")
    status, bound = await customer.bind(invite["code"])
    if status != 200:
        raise StepFailed(f"bind failed: {status} {bound}")
    welcome = await customer.wait_for(lambda m: m["sender"] == {"name": "小林"})
    _step(3, f"customer bound to {bound['advisor']['name']}; welcome: {welcome['text'][:24]}…")

    await customer.say("你好，上次看的那双鞋还有37码吗？")
    relayed = await wb.wait_for(lambda m: m["text"].startswith("【王女士 #"))
    _step(4, f"clerk sees: {relayed['text']}")
    await wb.say("有的，给您留一双，周末来试穿～")
    reply = await customer.wait_for(lambda m: "留一双" in m["text"])
    _step(5, f"customer sees from {reply['sender']['name']}: {reply['text']}")
    await wb.wait_for(lambda m: m["text"].startswith("→"))
    await wb.say("/customers")
    listing = await wb.wait_for(lambda m: "王女士" in m["text"] and "#1" in m["text"])
    _step(6, "clerk /customers: " + listing["text"].splitlines()[-1])

    await customer.say("退订")
    await customer.wait_for(lambda m: "退订" in m["text"])
    _step(7, "customer replied 退订: opted out of promotions")
    if clerk_on == "wecom":
        await wechat_contact_scene(gw, server, http, sim, invite["code"])
    n = await campaign_scene(gw, server, http, h, invite["code"], brand, first=9 if clerk_on == "wecom" else 8)
    served = gw.clock.now()  # a moment while 小林 is still the advisor
    await clerk_leaves(gw, server, http, h, store["id"], clerk["id"], customer, sim, clerk_on,
                       first=n)
    await orders_scene(gw, server, http, served, first=n + (3 if clerk_on == "wecom" else 2))

    await asyncio.sleep(0.2)
    async with gw.db() as s:
        def n(model, *where):
            return select(func.count()).select_from(model).where(*where)

        return {
            "bindings (open)": (await s.execute(n(Binding, Binding.valid_to.is_(None)))).scalar(),
            "messages in": (await s.execute(n(ChatMessage, ChatMessage.direction == "in"))).scalar(),
            "messages out": (await s.execute(n(ChatMessage, ChatMessage.direction == "out"))).scalar(),
            "outbox sent": (await s.execute(n(Outbox, Outbox.status == "sent"))).scalar(),
            "outbox not sent": (await s.execute(n(Outbox, Outbox.status != "sent"))).scalar(),
            "interactions": (await s.execute(n(Interaction))).scalar(),
        }


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def main(clerk_on: str = "workbench") -> int:
    started = time.monotonic()
    sim = sim_runner = None
    accounts = [{"name": "workbench", "platform": "workbench"}]
    if clerk_on == "dingtalk":
        from adapters.dingtalk.simulator import DingTalkSimulator

        sim = DingTalkSimulator(app_key="demo-app-key", app_secret=secrets.token_hex(16), robot_code="demo-robot",
                                agent_id="1001")
        sim_runner, sim_url = await _start(sim.app())
        accounts = [{"name": "dingtalk", "platform": "dingtalk", "app_key": "demo-app-key",
                     "app_secret": sim.app_secret, "robot_code": "demo-robot", "agent_id": "1001",
                     "api_base": sim_url, "oapi_base": sim_url}]
    elif clerk_on == "wecom":
        from adapters.wecom.simulator import WeComSimulator

        key = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")  # an EncodingAESKey: 43 chars
        sim = WeComSimulator(corp_id="wwdemocorp0001", agent_id="1000002", secret=secrets.token_hex(16),
                             token="demotoken", encoding_aes_key=key, members=["clerk001", "clerk002"])
        sim_runner, sim_url = await _start(sim.app())
        accounts = [{"name": "wecom", "platform": "wecom", "corp_id": "wwdemocorp0001", "agent_id": "1000002",
                     "secret": sim.secret, "token": "demotoken", "encoding_aes_key": key, "api_base": sim_url}]
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'demo.db'}"
        secret = secrets.token_hex(16)
        cfg = build_config({
            "database": {"url": url},
            "server": {"first_run_seed": False},
            "outbox": {"poll_interval": 0.05},
            "campaigns": {"tick_seconds": 0.2},
            "policies": {"quiet_hours": None},  # the demo runs at any hour: no quiet window
            "orders": {"webhook_secret": ORDERS_SECRET},
            # The workbench stays on in every mode: a colleague without a work IM account uses it.
            "accounts": [*accounts, *([] if sim is None else [{"name": "workbench", "platform": "workbench"}]),
                         {"name": "webchat", "platform": "webchat", "secret": secret}],
        }, env={})
        await upgrade(url)
        gw = Gateway(cfg)
        runner, server = await _start(create_app(gw))
        cfg.server.public_url = server
        clerk_side = {"dingtalk": "DingTalk", "wecom": "WeCom"}.get(clerk_on, "web workbench")
        clerk_side += " (simulated API)" if sim else ""
        print(f"Advisor Gateway demo — in-process gateway at {server}, temporary SQLite, clerk on {clerk_side}\n")
        try:
            async with aiohttp.ClientSession() as http:
                summary = await asyncio.wait_for(story(gw, server, http, secret, sim, clerk_on), 60)
            from gateway import reports

            report = await reports.build(gw, "clerks", gw.clock.now() - timedelta(days=1),
                                         gw.clock.now() + timedelta(days=1))
        except (StepFailed, TimeoutError) as e:
            print(f"\nDEMO FAILED: {e or 'a step timed out'}", file=sys.stderr)
            return 1
        finally:
            await runner.cleanup()
            if sim_runner:
                await sim_runner.cleanup()
    print("\nSummary")
    width = max(len(k) for k in summary)
    print("  " + "-" * (width + 10))
    for k, v in summary.items():
        print(f"  {k:<{width}}  {v:>6}")
    print("  " + "-" * (width + 10))
    from gateway import reports

    cols = ("clerk", "status", "members_recruited", "messages", "first_reply_median_s", "orders", "gmv", "commission")
    print("\nAttribution report (clerks, today)")
    print("  " + reports.to_table([{k: r[k] for k in cols} for r in report]).replace("\n", "\n  "))
    print(f"\nAll steps passed in {time.monotonic() - started:.1f} s.")
    return 0
