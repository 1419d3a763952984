"""Hostile input on every way in: platform callbacks (DingTalk robot + org events, WeCom, the Official
Account in safe and plain mode), the webchat API, the orders webhook and the admin API.

What each group proves, always by counting rows before and after (nothing stored means no new
inbound claim, message, interaction, customer, identity, binding, order or outbox row):
- forged / stale signatures → 401, nothing stored; the same signed request twice → one message, one relay;
- malformed, truncated, mistyped or entity-laden bodies → 4xx, nothing stored, and the next valid
  request still succeeds;
- 10 MB bodies (with and without Content-Length) → 413, nothing stored;
- unicode edge cases in names and texts → relayed byte-exact as `【name #n】text`, or a clear 400;
- SQL-ish / HTML-ish text → stored and relayed literally; `?q=` searches treat LIKE wildcards
  literally; the pages only ever insert data through textContent.
Findings in gateway/ (outside the adapters) are in section 6; they were fixed there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from adapters.dingtalk.simulator import DingTalkSimulator
from adapters.webchat.simulator import BrandApp, CustomerClient
from adapters.wechat_mp.simulator import OfficialAccountSimulator
from adapters.wecom.simulator import WeComSimulator
from adapters.workbench.simulator import ClerkClient
from gateway import advisors, labels
from gateway.app import create_app
from gateway.models import (
    Binding,
    ChatMessage,
    Clerk,
    ClerkIdentity,
    Customer,
    InboundClaim,
    Interaction,
    Order,
    Outbox,
    Store,
)
from gateway.models import Identity as IdentityRow
from gateway.runtime import Gateway
from gateway.tokens import create_token
from tests import test_dingtalk as dtt
from tests import test_wechat_mp as mpt
from tests import test_wecom as wct
from tests.conftest import WEBCHAT_SECRET, make_config, wait_until
from tests.test_wxml import BILLION_LAUGHS, EXTERNAL_ENTITY

ROOT = Path(__file__).resolve().parent.parent
ORDER_SECRET = "orders-webhook-secret-0123456789"
DT_SECRET = "ding-app-secret-0001"
TEN_MB = 10 * 1024 * 1024
ENTITY_DECL = '<!DOCTYPE xml [<!ENTITY a "b">]><xml><MsgType>text</MsgType><Content>&a;</Content></xml>'

# -- rows: "nothing stored" is "no new row in any of these" ------------------------------------------

TABLES = {"inbound_claim": InboundClaim, "message": ChatMessage, "interaction": Interaction, "customer": Customer,
          "identity": IdentityRow, "binding": Binding, "orders": Order, "outbox": Outbox}


async def counts(gw) -> dict[str, int]:
    """Row counts of TABLES, in one round trip."""
    query = select(*(select(func.count()).select_from(m).scalar_subquery() for m in TABLES.values()))
    async with gw.db() as s:
        return dict(zip(TABLES, (await s.execute(query)).one(), strict=True))


async def settled(gw) -> dict[str, int]:
    """Row counts once background work (claims, outbox) has finished: the baseline to compare with."""
    async def quiet():
        async with gw.db() as s:
            pending = (await s.execute(select(func.count()).select_from(InboundClaim)
                                       .where(InboundClaim.status == "pending"))).scalar()
            sending = (await s.execute(select(func.count()).select_from(Outbox)
                                       .where(Outbox.status.in_(("pending", "sending"))))).scalar()
        return pending == 0 and sending == 0

    await wait_until(quiet)
    return await counts(gw)


async def assert_nothing_stored(gw, before: dict[str, int]) -> None:
    await asyncio.sleep(0.05)  # anything wrongly accepted would be claimed by now (claims are batched)
    assert await counts(gw) == before


async def n_rows(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


# -- one gateway with every platform, each platform's simulator serving its API --------------------------

@dataclass
class Hx:
    gw: Gateway
    client: Any
    dt: DingTalkSimulator
    wc: WeComSimulator
    mp: OfficialAccountSimulator  # safe mode (AES)
    mpp: OfficialAccountSimulator  # plain mode
    brand: BrandApp
    admin: str
    invites: dict[str, str]  # clerk -> invite code: "dt" (DingTalk clerk), "wc" (WeCom clerk), "wb" (workbench)
    wb_clerk: ClerkClient
    clerk_ids: dict[str, int]

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def customer(self, user_id: str, name: str | None, clerk: str = "wb") -> CustomerClient:
        c = await self.brand.login(user_id, name)
        status, body = await c.bind(self.invites[clerk])
        assert status == 200, body
        return c


@pytest.fixture
async def hx(aiohttp_server, aiohttp_client, db_url, request) -> Hx:
    dt = DingTalkSimulator(app_key="dingappkey01", app_secret=DT_SECRET, robot_code="dingrobot01", agent_id="1001",
                           corp_id="dingcorp0001", token="evt-token", aes_key=dtt.AES_KEY)
    wc = WeComSimulator(corp_id=wct.CORP, agent_id=wct.AGENT, secret=wct.SECRET, token=wct.TOKEN,
                        encoding_aes_key=wct.AES_KEY, members=["zhangsan", "lisi"])
    mp = OfficialAccountSimulator(app_id=mpt.APP_ID, app_secret=mpt.SECRET, token=mpt.TOKEN,
                                  encoding_aes_key=mpt.AES_KEY)
    mpp = OfficialAccountSimulator(app_id="wxplain000000001", app_secret="mpp-secret", token="mpptoken")
    bases = {}
    for name, sim in (("dt", dt), ("wc", wc), ("mp", mp), ("mpp", mpp)):
        bases[name] = str((await aiohttp_server(sim.app())).make_url("")).rstrip("/")
    accounts = [
        {"name": "workbench", "platform": "workbench"},
        {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET},
        {"name": "dt", "platform": "dingtalk", "mode": getattr(request, "param", "http"), "app_key": "dingappkey01",
         "app_secret": DT_SECRET,
         "robot_code": "dingrobot01", "agent_id": "1001", "api_base": bases["dt"], "oapi_base": bases["dt"],
         "corp_id": "dingcorp0001", "event_token": "evt-token", "event_aes_key": dtt.AES_KEY, "timeout": 2},
        wct.account(bases["wc"]),
        {"name": "mp", "platform": "wechat_mp", "app_id": mpt.APP_ID, "app_secret": mpt.SECRET, "token": mpt.TOKEN,
         "encoding_aes_key": mpt.AES_KEY, "api_base": bases["mp"], "qr_base": bases["mp"], "timeout": 2},
        {"name": "mpp", "platform": "wechat_mp", "app_id": "wxplain000000001", "app_secret": "mpp-secret",
         "token": "mpptoken", "api_base": bases["mpp"], "qr_base": bases["mpp"], "timeout": 2},
    ]
    cfg = make_config(db_url, accounts=accounts, orders={"webhook_secret": ORDER_SECRET},
                      outbox={"poll_interval": 0.05, "backoff_base": 0.05})
    gw = Gateway(cfg)
    client = await aiohttp_client(create_app(gw))
    gw.config.server.public_url = str(client.make_url("")).rstrip("/")
    async with gw.db() as s:
        store = Store(name="静安店")
        s.add(store)
        await s.flush()
        clerks = {"dt": Clerk(name="林小雨", display_name="小林", store_id=store.id),
                  "wc": Clerk(name="王芳", display_name="芳芳", store_id=store.id),
                  "wb": Clerk(name="陈晨", display_name="晨晨", store_id=store.id)}
        s.add_all(clerks.values())
        await s.flush()
        s.add_all([ClerkIdentity(clerk_id=clerks["dt"].id, platform="dingtalk", account="dt", external_id=dtt.STAFF),
                   ClerkIdentity(clerk_id=clerks["wc"].id, platform="wecom", account="wc", external_id="zhangsan")])
        invites = {k: (await advisors.create_invite(s, c.id)).code for k, c in clerks.items()}
        _, wb_token = await create_token(s, "clerk", clerk_id=clerks["wb"].id)
        _, admin = await create_token(s, "admin")
        await s.commit()
    return Hx(gw, client, dt, wc, mp, mpp, BrandApp(client.session, gw.config.server.public_url, "webchat",
                                                      WEBCHAT_SECRET), admin, invites,
              ClerkClient(client.session, gw.config.server.public_url, wb_token), {k: c.id for k, c in clerks.items()})


@contextmanager
def shifted(sim, seconds: float):
    """Requests the simulator builds meanwhile carry a timestamp `seconds` away from now."""
    real = sim.clock
    sim.clock = lambda: real() + seconds
    try:
        yield
    finally:
        sim.clock = real


async def post(hx: Hx, path: str, *, params=None, headers=None, data=None, json_body=None):
    async with hx.client.session.post(hx.base + path, params=params, headers=headers, data=data,
                                      json=json_body) as resp:
        return resp.status, await resp.read()


def order_body(order_id: str = "PO-1", **over) -> bytes:
    body = {"order_id": order_id, "customer": {"channel": "webchat", "external_id": "u-nobody"}, "amount": "12.30",
            "currency": "CNY", "channel": "store", "placed_at": "2026-01-05T10:00:00+08:00", **over}
    return json.dumps(body, ensure_ascii=False).encode()


def order_sig(raw: bytes, secret: str = ORDER_SECRET) -> dict[str, str]:
    return {"X-Gateway-Signature": hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def dt_event_raw(sim: DingTalkSimulator, plaintext: str, timestamp: str | None = None) -> tuple[dict, bytes]:
    """An event callback whose decrypted plaintext is exactly `plaintext` (the simulator's helper JSON-encodes)."""
    ts = timestamp or str(int(time.time() * 1000))
    nonce = secrets.token_hex(4)
    encrypt = sim.crypto.encrypt(plaintext)
    sig = sim.crypto.sign(ts, nonce, encrypt)
    return {"signature": sig, "msg_signature": sig, "timestamp": ts, "nonce": nonce}, json.dumps(
        {"encrypt": encrypt}).encode()


async def customer_id(gw, platform: str, external_id: str) -> int | None:
    async with gw.db() as s:
        return (await s.execute(select(IdentityRow.customer_id).where(
            IdentityRow.platform == platform, IdentityRow.external_id == external_id))).scalar()


async def still_serving(hx: Hx, tag: str) -> None:
    """After hostile input the process keeps serving: a valid message goes through and is stored."""
    c = await hx.brand.login(f"u-after-{tag}", "After")
    status, _ = await c.say(f"still here {tag}")
    assert status == 202
    await wait_until(lambda: n_rows(hx.gw, ChatMessage, ChatMessage.text == f"still here {tag}"))


# == 1. forged, stale and replayed requests ==========================================================

async def test_dingtalk_robot_forged_stale_and_replayed(hx):
    c = await hx.customer("u-dt", "Dee", "dt")
    await c.say("在吗")
    await wait_until(lambda: "【Dee #1】在吗" in dtt.sim_texts(hx.dt))
    before = await settled(hx.gw)
    forged = [hx.dt.robot_callback(dtt.STAFF, "#1 forged", secret="not-the-app-secret")]
    with shifted(hx.dt, -2 * 3600):
        forged.append(hx.dt.robot_callback(dtt.STAFF, "#1 stale"))
    with shifted(hx.dt, +2 * 3600):
        forged.append(hx.dt.robot_callback(dtt.STAFF, "#1 from the future"))
    headers, body = hx.dt.robot_callback(dtt.STAFF, "#1 unsigned")
    forged += [({k: v for k, v in headers.items() if k != "sign"}, body),
               ({k: v for k, v in headers.items() if k != "timestamp"}, body),
               ({**headers, "sign": "签名"}, body),  # not ASCII: compared safely, not a crash
               ({**headers, "timestamp": "¹²³"}, body)]  # str.isdigit() digits that int() refuses
    for h, b in forged:
        assert (await post(hx, "/callbacks/dt", headers=h, data=b))[0] == 401
    await assert_nothing_stored(hx.gw, before)

    headers, body = hx.dt.robot_callback(dtt.STAFF, "#1 只回一次")
    for _ in range(2):  # the same signed request twice: processed once
        assert (await post(hx, "/callbacks/dt", headers=headers, data=body))[0] == 200
    await c.wait_for(lambda m: m["text"] == "只回一次")
    await settled(hx.gw)
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text == "只回一次", ChatMessage.direction == "out") == 1
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text == "#1 只回一次", ChatMessage.direction == "in") == 1
    assert await n_rows(hx.gw, InboundClaim) == before["inbound_claim"] + 1


async def test_dingtalk_org_event_forged_tampered_and_replayed(hx):
    before = await settled(hx.gw)
    event = {"EventType": "user_leave_org", "TimeStamp": str(int(time.time() * 1000)), "UserId": [dtt.STAFF],
             "CorpId": "dingcorp0001"}
    params, body = hx.dt.event_callback(event)
    enc = json.loads(body)["encrypt"]
    other = DingTalkSimulator(app_key="x", app_secret="y", robot_code="z", agent_id="1", corp_id="dingcorpOTHER",
                              token="evt-token", aes_key=dtt.AES_KEY)
    o_params, o_body = other.event_callback(event)  # right token and key, another corp inside
    for p, b in [({**params, "signature": "0" * 40, "msg_signature": "0" * 40}, body),
                 ({**params, "nonce": "changed"}, body),
                 (params, json.dumps({"encrypt": enc[:-8] + "AAAAAAA="}).encode()),  # ciphertext tampered
                 (params, json.dumps({"encrypt": "not base64 at all!"}).encode()),
                 ({**params, "signature": "签名", "msg_signature": "签名"}, body),
                 (o_params, o_body)]:
        assert (await post(hx, "/callbacks/dt", params=p, data=b))[0] == 401
    await assert_nothing_stored(hx.gw, before)

    for _ in range(2):
        status, reply = await post(hx, "/callbacks/dt", params=params, data=body)
        assert status == 200 and hx.dt.decrypt_reply(reply) == "success"  # a retry is still answered
    await settled(hx.gw)
    assert await n_rows(hx.gw, InboundClaim) == before["inbound_claim"] + 1
    assert await n_rows(hx.gw, Clerk, Clerk.id == hx.clerk_ids["dt"], Clerk.status == "left") == 1


async def test_wecom_forged_stale_and_replayed(hx):
    c = await hx.customer("u-wc", "Wes", "wc")
    await c.say("你好")
    await wait_until(lambda: "【Wes #1】你好" in wct.texts_to(hx.wc))
    before = await settled(hx.gw)
    query, body = hx.wc.message_callback("zhangsan", "#1 forged")
    requests = [({**query, "msg_signature": "f" * 40}, body), ({**query, "timestamp": "1"}, body),
                ({**query, "nonce": "1"}, body), ({k: v for k, v in query.items() if k != "msg_signature"}, body),
                ({**query, "msg_signature": "签名"}, body)]
    for stale in (-2 * 3600, +2 * 3600):
        with shifted(hx.wc, stale):  # correctly signed, but long ago (or ahead): a replay
            requests.append(hx.wc.message_callback("zhangsan", "#1 stale"))
    for q, b in requests:
        assert (await post(hx, "/callbacks/wc", params=q, data=b))[0] == 401, q
    await assert_nothing_stored(hx.gw, before)

    query, body = hx.wc.message_callback("zhangsan", "#1 只回一次")
    for _ in range(2):
        status, answer = await post(hx, "/callbacks/wc", params=query, data=body)
        assert status == 200 and answer == b""
    await c.wait_for(lambda m: m["text"] == "只回一次")
    await settled(hx.gw)
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text == "只回一次", ChatMessage.direction == "out") == 1
    assert await n_rows(hx.gw, InboundClaim) == before["inbound_claim"] + 1


@pytest.mark.parametrize("mode", ["safe", "plain"])
async def test_wechat_mp_forged_stale_and_replayed(hx, mode):
    sim, path = (hx.mp, "/callbacks/mp") if mode == "safe" else (hx.mpp, "/callbacks/mpp")
    before = await settled(hx.gw)
    q, body = sim.text("oForger", "hi")
    requests = [({**q, "signature": "0" * 40}, body), ({**q, "nonce": "x"}, body),
                ({k: v for k, v in q.items() if k != "signature"}, body), ({**q, "signature": "签名"}, body),
                ({**q, "timestamp": "¹²³"}, body)]
    if mode == "safe":
        requests += [({**q, "msg_signature": "0" * 40}, body), ({**q, "msg_signature": "签名"}, body)]
    for stale in (-600, +600):
        with shifted(sim, stale):
            requests.append(sim.text("oStale", "hi"))
    for p, b in requests:
        assert (await post(hx, path, params=p, data=b))[0] == 401, p
    await assert_nothing_stored(hx.gw, before)

    q, body = sim.subscribe("oTwice", scene=f"gw:{hx.invites['wb']}")
    assert (await post(hx, path, params=q, data=body)) == (200, b"success")
    q, body = sim.text("oTwice", "有37码吗")
    for _ in range(2):  # WeChat retries after 5 s with the same MsgId
        assert (await post(hx, path, params=q, data=body)) == (200, b"success")
    seen = await hx.wb_clerk.wait_for(lambda m: m["text"].endswith("#1】有37码吗"))
    assert seen["text"].startswith("【")
    await settled(hx.gw)
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text == "有37码吗", ChatMessage.direction == "in") == 1
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text.endswith("#1】有37码吗"),
                        ChatMessage.direction == "out") == 1


async def test_webchat_forged_tokens_and_replayed_messages(hx):
    c = await hx.customer("u-web", "Web")
    before = await settled(hx.gw)
    good = hx.brand.signed("u-web")
    sessions = [{**good, "sig": "é" * 64}, {**good, "sig": "0" * 64}, {**good, "ts": good["ts"] - 3600},
                {**good, "user_id": "u-other"}, {**good, "sig": good["sig"].upper()[:-1]}]
    for body in sessions:
        assert (await post(hx, "/webchat/webchat/session", json_body=body))[0] == 401, body
    tokens = [c.token[:-1] + ("A" if c.token[-1] != "A" else "B"), c.token.split(".")[0], "x.y.z", "é.é",
              "Bearer", "", c.token + "é"]
    for tok in tokens:
        for path in ("/webchat/webchat/messages", "/webchat/webchat/bind"):
            status, _ = await post(hx, path, headers={"Authorization": f"Bearer {tok}"},
                                   json_body={"text": "hi", "client_msg_id": "f", "invite": hx.invites["wb"],
                                              "consent": True})
            assert status == 401, (tok, path)
        async with hx.client.session.get(hx.base + "/webchat/webchat/messages",
                                         headers={"Authorization": f"Bearer {tok}"}) as resp:
            assert resp.status == 401
        async with hx.client.session.get(hx.base + "/webchat/webchat/messages", params={"token": tok}) as resp:
            assert resp.status == 401
    await assert_nothing_stored(hx.gw, before)

    for _ in range(3):  # the app retries with the same client_msg_id
        status, body = await c.say("重复发送", client_msg_id="cm-1")
        assert status == 202
    await hx.wb_clerk.wait_for(lambda m: m["text"] == "【Web #1】重复发送")
    await settled(hx.gw)
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text == "重复发送") == 1
    assert await n_rows(hx.gw, ChatMessage, ChatMessage.text == "【Web #1】重复发送") == 1
    assert await n_rows(hx.gw, Interaction, Interaction.type == "message_in",
                        Interaction.customer_id == await customer_id(hx.gw, "webchat", "u-web")) == 1


async def test_orders_forged_and_replayed(hx):
    before = await settled(hx.gw)
    raw = order_body("PO-forged")
    attempts = [{"X-Gateway-Signature": "0" * 64}, {}, order_sig(raw, "wrong-secret"), order_sig(raw + b" "),
                {"X-Gateway-Signature": order_sig(raw)["X-Gateway-Signature"][:-1]}]
    for h in attempts:
        status, body = await post(hx, "/api/v1/orders", headers=h, data=raw)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized", h
    # an admin bearer token is not a webhook signature
    status, _ = await post(hx, "/api/v1/orders", headers={"Authorization": f"Bearer {hx.admin}"}, data=raw)
    assert status == 401
    await assert_nothing_stored(hx.gw, before)

    raw = order_body("PO-replay")
    first = await post(hx, "/api/v1/orders", headers=order_sig(raw), data=raw)
    second = await post(hx, "/api/v1/orders", headers=order_sig(raw), data=raw)
    assert (first[0], second[0]) == (201, 200)
    assert json.loads(first[1]) == json.loads(second[1])
    assert await n_rows(hx.gw, Order) == 1
    assert await n_rows(hx.gw, Interaction, Interaction.type == "order") == 1


async def test_admin_api_refuses_forged_tokens(hx):
    before = await settled(hx.gw)
    for auth in [None, "Bearer", "Bearer ", f"Bearer {hx.admin}x", f"Basic {hx.admin}", f"bearer {hx.admin}",
                 "Bearer gw_" + "0" * 40, "Bearer 令牌", f"Bearer {hx.wb_clerk.token}"]:
        headers = {"Authorization": auth} if auth is not None else {}
        status, body = await post(hx, "/api/v1/stores", headers=headers, json_body={"name": "黑店"})
        assert status in (401, 403) and json.loads(body)["error"]["code"] in ("unauthorized", "forbidden"), auth
    await assert_nothing_stored(hx.gw, before)
    assert await n_rows(hx.gw, Store, Store.name == "黑店") == 0


# == 2. malformed bodies: 4xx, nothing stored, and the next valid request still works ====================

DEEP_JSON = b"[" * 100_000  # json.loads raises RecursionError here, not ValueError
JSON_CASES = {
    "empty": b"",
    "truncated": b'{"msgId": "m1", "text": {"content": "hi',
    "array": b"[1, 2]",
    "string": b'"just a string"',
    "null": b"null",
    "xml": b"<xml><MsgType>text</MsgType></xml>",
    "form": b"msgId=m1&text=hi",
    "bad-utf8": b'{"msgId": "\xff\xfe"}',
    "deep": DEEP_JSON,
    "huge-int": b'{"n": ' + b"9" * 5000 + b"}",  # over Python's int-digits limit
    "nan": b'{"msgId": "m1", "createAt": NaN}',  # NaN / Infinity / 1e999 are not JSON (PostgreSQL's json agrees)
    "infinity": b'{"msgId": "m1", "createAt": -Infinity}',
    "float-overflow": b'{"msgId": "m1", "createAt": 1e999}',
}


def dt_structure_cases() -> dict[str, bytes]:
    base = {"msgId": "mX", "senderStaffId": dtt.STAFF, "conversationType": "1", "msgtype": "text",
            "text": {"content": "#1 hi"}, "createAt": int(time.time() * 1000)}
    cases = {
        "msgId-number": {**base, "msgId": 5},
        "msgId-nan": {**base, "msgId": float("nan")},
        "msgId-too-long": {**base, "msgId": "m" * 129},  # message.platform_msg_id is VARCHAR(128)
        "staff-missing": {k: v for k, v in base.items() if k != "senderStaffId"},
        "staff-list": {**base, "senderStaffId": [dtt.STAFF]},
        "staff-too-long": {**base, "senderStaffId": "s" * 129},
        "text-is-a-string": {**base, "text": "#1 hi"},
        "text-is-a-list": {**base, "text": ["#1 hi"]},
        "content-not-a-string": {**base, "text": {"content": {"x": 1}}},
        "richtext-not-a-list": {**base, "msgtype": "richText", "content": {"richText": 5}},
        "richtext-string": {**base, "msgtype": "richText", "content": {"richText": "#1 hi"}},
        "download-code-object": {**base, "msgtype": "picture", "content": {"downloadCode": {"a": 1}}},
        "nul-in-text": {**base, "text": {"content": "#1 a\x00b"}},
        "lone-surrogate": {**base, "text": {"content": "#1 a\ud800b"}},
    }
    return {k: json.dumps(v).encode() for k, v in cases.items()}


async def expect_refused(hx, subtests, cases: dict[str, Any], send, *, status: int | tuple = 400,
                         code: str | tuple = "bad_request", follow_up: bool = True) -> None:
    """Every case answers `status` with a JSON error and stores nothing; the process serves on."""
    before = await settled(hx.gw)
    for case, item in cases.items():
        with subtests.test(case=case):
            got, answer = await send(item)
            assert got in (status if isinstance(status, tuple) else (status,)), answer
            if code:
                assert json.loads(answer)["error"]["code"] in (code if isinstance(code, tuple) else (code,))
            assert await counts(hx.gw) == before
    await assert_nothing_stored(hx.gw, before)
    if follow_up:
        await still_serving(hx, "after")


async def test_dingtalk_robot_malformed_is_400(hx, subtests):
    headers, _ = hx.dt.robot_callback(dtt.STAFF, "ignored")  # the sign covers the timestamp, never the body

    async def send(body):
        return await post(hx, "/callbacks/dt", headers=headers, data=body)

    await expect_refused(hx, subtests, {**JSON_CASES, **dt_structure_cases()}, send)


async def test_dingtalk_robot_odd_but_valid_fields_are_acknowledged(hx):
    """Times no clock can show fall back to the receive time; group chats and kinds we do not relay
    are acknowledged with nothing stored. Never a 500. (1e999, NaN and Infinity are not JSON: 400.)"""
    before = await settled(hx.gw)
    headers, body = hx.dt.robot_callback(dtt.STAFF, "/help")
    msg = json.loads(body)
    for i, over in enumerate([{"createAt": 10**30}, {"createAt": -(10**30)}, {"createAt": 1e308},
                              {"createAt": "yesterday"}, {"createAt": True}]):
        raw = json.dumps({**msg, **over, "msgId": f"odd-{i}"}).encode()
        status, answer = await post(hx, "/callbacks/dt", headers=headers, data=raw)
        assert status == 200, (over, answer)
    for i, over in enumerate([{"conversationType": "2"}, {"msgtype": "unknown"}, {"msgtype": "text", "text": {}},
                              {"msgtype": "picture", "content": {}}, {"msgtype": "text", "text": None}]):
        raw = json.dumps({**msg, **over, "msgId": f"skip-{i}"}).encode()
        assert (await post(hx, "/callbacks/dt", headers=headers, data=raw))[0] == 200, over
    await settled(hx.gw)
    assert (await counts(hx.gw))["inbound_claim"] == before["inbound_claim"] + 5  # the five /help only


async def test_dingtalk_org_event_malformed(hx, subtests):
    plaintexts = {
        "not-json": "not json",
        "truncated": '{"EventType": "user_leave_org", "UserId": ',
        "userid-number": '{"EventType": "user_leave_org", "UserId": 5}',
        "userid-objects": '{"EventType": "user_leave_org", "UserId": [{"a": 1}]}',
        "userid-too-long": json.dumps({"EventType": "user_leave_org", "UserId": ["u" * 129]}),
        "lone-surrogate": '{"EventType": "user_leave_org", "UserId": ["\\ud800"]}',
        "nul": '{"EventType": "user_leave_org", "UserId": ["a\\u0000b"]}',
        "deep": "[" * 100_000,
    }

    async def send_plain(text):  # correctly encrypted and signed, malformed inside
        params, body = dt_event_raw(hx.dt, text)
        return await post(hx, "/callbacks/dt", params=params, data=body)

    await expect_refused(hx, subtests, plaintexts, send_plain, follow_up=False)
    params, _ = hx.dt.event_callback({"EventType": "check_url"})
    envelopes = {"empty": b"", "truncated": b'{"encrypt": "', "array": b"[]", "encrypt-number": b'{"encrypt": 5}',
                 "encrypt-null": b'{"encrypt": null}', "no-encrypt": b"{}", "xml": b"<xml><Encrypt>x</Encrypt></xml>",
                 "deep": DEEP_JSON, "surrogate": b'{"encrypt": "\\udc00"}'}

    async def send_envelope(body):
        return await post(hx, "/callbacks/dt", params=params, data=body)

    await expect_refused(hx, subtests, envelopes, send_envelope)
    # Well-formed but of no use to us: acknowledged with the encrypted "success", nothing stored.
    before = await settled(hx.gw)
    for text in ("[1, 2]", '{"EventType": ["user_leave_org"]}', '{"EventType": "user_add_org", "UserId": 5}'):
        status, reply = await send_plain(text)
        assert status == 200 and hx.dt.decrypt_reply(reply) == "success", text
    await assert_nothing_stored(hx.gw, before)


@pytest.mark.parametrize("hx", ["stream"], indirect=True)
async def test_dingtalk_stream_malformed_frames_are_refused_without_reconnecting(hx, subtests):
    """Stream mode: a frame parse cannot use is acked 400 (or DingTalk delivers it again forever) and
    the connection stays up; before, a non-object frame crashed the handler and looped reconnects."""
    from adapters.dingtalk.events import ROBOT_TOPIC

    await wait_until(lambda: hx.dt.stream_connections == 1)
    before = await settled(hx.gw)
    good = hx.dt._robot_message(dtt.STAFF, "#1 hi")
    frames = {"list": [1, 2], "string": "just a string", "number": 5, "null": None,
              "text-not-an-object": {**good, "text": "#1 hi"}, "nul": {**good, "text": {"content": "a\x00b"}},
              "richtext-number": {**good, "msgtype": "richText", "content": {"richText": 5}},
              "no-msgId": {k: v for k, v in good.items() if k != "msgId"}}
    for case, data in frames.items():
        with subtests.test(case=case):
            mid = await hx.dt._send(hx.dt._pick("CALLBACK", ROBOT_TOPIC), "CALLBACK", ROBOT_TOPIC, data)
            await wait_until(lambda mid=mid: mid in hx.dt.stream_acks)
            assert hx.dt.stream_acks[mid]["code"] == 400
    assert hx.gw.adapters["dt"].stream.connections == 1  # never dropped
    await assert_nothing_stored(hx.gw, before)
    mid = await hx.dt.push_stream(dtt.STAFF, "/help")
    await wait_until(lambda: mid in hx.dt.stream_acks)
    assert hx.dt.stream_acks[mid]["code"] == 200


XML_BODIES = {
    "empty": "",
    "truncated": "<xml><MsgType>text</MsgType><Content>hi",
    "not-xml": "this is not xml",
    "json": '{"MsgType": "text", "Content": "hi"}',
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": EXTERNAL_ENTITY,
    "entity-declaration": ENTITY_DECL,
    "other-root": "<root><MsgType>text</MsgType></root>",
    "control-char": "<xml><MsgType>text</MsgType><Content>a\x07b</Content></xml>",
    "nul-reference": "<xml><MsgType>text</MsgType><Content>a&#0;b</Content></xml>",
}
BAD_FIELDS = {
    "no-msgtype": "<xml><FromUserName>u</FromUserName><MsgId>1</MsgId><Content>hi</Content></xml>",
    "no-msgid": "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><Content>hi</Content></xml>",
    "no-from": "<xml><MsgType>text</MsgType><MsgId>1</MsgId><Content>hi</Content></xml>",
    "from-too-long": f"<xml><FromUserName>{'u' * 129}</FromUserName><MsgType>text</MsgType><MsgId>1</MsgId>"
                     "<Content>hi</Content></xml>",  # identity.external_id is VARCHAR(128)
    "msgid-too-long": f"<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><MsgId>{'1' * 129}</MsgId>"
                      "<Content>hi</Content></xml>",
}
ENVELOPES = {**{k: v.encode() for k, v in XML_BODIES.items()}, "no-encrypt": b"<xml><ToUserName>x</ToUserName></xml>",
             "empty-encrypt": b"<xml><Encrypt></Encrypt></xml>", "bad-utf8": b"<xml><Encrypt>\xff</Encrypt></xml>"}


async def test_wecom_malformed_is_400(hx, subtests):
    query, _ = hx.wc.message_callback("zhangsan", "hi")

    async def send_envelope(body):  # what arrives before anything is decrypted
        return await post(hx, "/callbacks/wc", params=query, data=body)

    async def send_inside(text):  # correctly encrypted and signed by WeCom, malformed inside
        return await post(hx, "/callbacks/wc", *(), **dict(zip(("params", "data"), hx.wc.encrypt_event(text),
                                                                strict=True)))

    await expect_refused(hx, subtests, ENVELOPES, send_envelope, follow_up=False)
    await expect_refused(hx, subtests, {**XML_BODIES, **BAD_FIELDS}, send_inside)


@pytest.mark.parametrize("mode", ["safe", "plain"])
async def test_wechat_mp_malformed_is_400(hx, subtests, mode):
    sim, path = (hx.mp, "/callbacks/mp") if mode == "safe" else (hx.mpp, "/callbacks/mpp")
    query, _ = sim.text("oMalformed", "hi")

    async def send_envelope(body):
        return await post(hx, path, params=query, data=body)

    async def send_inside(text):  # signed (in safe mode also encrypted) by WeChat, malformed inside
        q, body = sim.push(text, "oMalformed")
        return await post(hx, path, params=q, data=body)

    if mode == "safe":
        await expect_refused(hx, subtests, ENVELOPES, send_envelope, follow_up=False)
    await expect_refused(hx, subtests, {**XML_BODIES, **BAD_FIELDS}, send_inside)


async def test_wechat_mp_envelope_mode_mismatches(hx):
    before = await settled(hx.gw)
    q, _ = hx.mpp.text("oPlain", "hi")  # an envelope sent to the plain-mode account: it has no key
    assert (await post(hx, "/callbacks/mpp", params=q, data=b"<xml><Encrypt>abc</Encrypt></xml>"))[0] == 400
    q, _ = hx.mp.text("oSafe", "hi")  # plain XML to the safe-mode account: refused
    plain = (b"<xml><ToUserName>gh</ToUserName><FromUserName>oSafe</FromUserName><CreateTime>1</CreateTime>"
             b"<MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>")
    plain_q = {k: v for k, v in q.items() if k not in ("encrypt_type", "msg_signature")}
    assert (await post(hx, "/callbacks/mp", params=plain_q, data=plain))[0] == 400
    assert (await post(hx, "/callbacks/mp", params=q, data=b"<xml><Encrypt>!!not base64!!</Encrypt></xml>"))[0] == 401
    await assert_nothing_stored(hx.gw, before)


SMALL_DEEP = b"[" * 3000  # still too deep for json, but under the session endpoint's 4 KiB limit
WEBCHAT_SESSION_CASES = {
    "empty": b"",
    "truncated": b'{"user_id": "u',
    "array": b"[]",
    "deep": SMALL_DEEP,
    "form": b"user_id=u&ts=1&sig=x",
    "xml": b"<xml><user_id>u</user_id></xml>",
    "user-id-number": b'{"user_id": 5, "ts": 1, "sig": "x"}',
    "user-id-long": json.dumps({"user_id": "u" * 129, "ts": 1, "sig": "x"}).encode(),
    "user-id-surrogate": b'{"user_id": "u\\ud800", "ts": 1, "sig": "x"}',
    "user-id-nul": b'{"user_id": "u\\u0000", "ts": 1, "sig": "x"}',
    "name-surrogate": b'{"user_id": "u", "name": "\\udfff", "ts": 1, "sig": "x"}',
    "name-nul": b'{"user_id": "u", "name": "a\\u0000b", "ts": 1, "sig": "x"}',
    "name-too-long": json.dumps({"user_id": "u", "name": "名" * 65, "ts": 1, "sig": "x"}).encode(),
    "name-number": b'{"user_id": "u", "name": 5, "ts": 1, "sig": "x"}',
    "ts-float": b'{"user_id": "u", "ts": 1.5, "sig": "x"}',
    "ts-bool": b'{"user_id": "u", "ts": true, "sig": "x"}',
    "ts-nan": b'{"user_id": "u", "ts": NaN, "sig": "x"}',
    "ts-unicode-digits": '{"user_id": "u", "ts": "¹²³", "sig": "x"}'.encode(),
    "sig-number": b'{"user_id": "u", "ts": 1, "sig": 5}',
    "unionid-empty": b'{"user_id": "u", "ts": 1, "sig": "x", "unionid": ""}',
}


async def test_webchat_session_malformed_is_400(hx, subtests):
    async def send(body):
        return await post(hx, "/webchat/webchat/session", data=body, headers={"Content-Type": "application/json"})

    await expect_refused(hx, subtests, WEBCHAT_SESSION_CASES, send)


WEBCHAT_MESSAGE_CASES = {
    "empty": b"",
    "deep": DEEP_JSON,
    "xml": b"<xml><Content>hi</Content></xml>",
    "form": b"text=hi&client_msg_id=1",
    "text-list": b'{"client_msg_id": "a", "text": ["hi"]}',
    "text-nan": b'{"client_msg_id": "a", "text": NaN}',
    "text-blank": b'{"client_msg_id": "a", "text": " \\n\\t\\u3000"}',
    "segments-object": b'{"client_msg_id": "a", "segments": {"type": "text"}}',
    "segments-21": json.dumps({"client_msg_id": "a", "segments": [{"type": "text", "text": "x"}] * 21}).encode(),
    "segment-nested": b'{"client_msg_id": "a", "segments": [{"type": "link", "url": "https://x", "t": {"a": 1}}]}',
    "segment-js-url": b'{"client_msg_id": "a", "segments": [{"type": "link", "url": "JaVaScRiPt:alert(1)"}]}',
    "segment-data-url": b'{"client_msg_id": "a", "segments": [{"type": "image", "url": "data:text/html,<script>"}]}',
    "client-msg-id-long": json.dumps({"client_msg_id": "c" * 129, "text": "hi"}).encode(),
    "text-surrogate": b'{"client_msg_id": "a", "text": "hi \\ud83d"}',
    "text-raw-surrogate": b'{"client_msg_id": "a", "text": "hi \xed\xa0\x80"}',  # surrogate as UTF-8 bytes
    "text-nul": b'{"client_msg_id": "a", "text": "a\\u0000b"}',
    "client-msg-id-nul": b'{"client_msg_id": "a\\u0000", "text": "hi"}',
    "key-surrogate": b'{"client_msg_id": "a", "text": "hi", "\\ud800": 1}',
}


async def test_webchat_message_malformed_is_400(hx, subtests):
    c = await hx.customer("u-mal", "Mal")

    async def send(body):
        return await post(hx, "/webchat/webchat/messages", data=body,
                          headers={**c.headers, "Content-Type": "application/json"})

    await expect_refused(hx, subtests, WEBCHAT_MESSAGE_CASES, send)
    status, _ = await c.say("ok after all that")
    assert status == 202
    await hx.wb_clerk.wait_for(lambda m: m["text"] == "【Mal #1】ok after all that")


async def test_webchat_bind_malformed_is_400(hx, subtests):
    c = await hx.brand.login("u-bind", "Bind")
    cases = {"empty": b"", "array": b"[]", "deep": DEEP_JSON, "invite-number": b'{"invite": 5, "consent": true}',
             "consent-string": b'{"invite": "abc", "consent": "yes"}', "no-invite": b'{"consent": true}',
             "invite-long": b'{"invite": "' + b"a" * 33 + b'", "consent": true}',
             "switch-string": b'{"invite": "abc", "consent": true, "switch": "true"}',
             "invite-surrogate": b'{"invite": "\\ud800", "consent": true}',
             "invite-nul": b'{"invite": "a\\u0000", "consent": true}'}

    async def send(body):
        return await post(hx, "/webchat/webchat/bind", data=body, headers=c.headers)

    await expect_refused(hx, subtests, cases, send)
    for invite, consent, status in [("zzzzzzzz", True, 404), ("'; DROP TABLE invite;--", True, 404),
                                    ("%", True, 404), ("_", True, 404), (hx.invites["wb"], False, 422)]:
        assert (await c.bind(invite, consent=consent))[0] == status, invite
    assert await n_rows(hx.gw, Binding) == 0
    assert (await c.bind(hx.invites["wb"]))[0] == 200


async def test_workbench_message_malformed_is_400(hx, subtests):
    cases = {k: WEBCHAT_MESSAGE_CASES[k] for k in ("empty", "deep", "form", "text-surrogate", "text-nul",
                                                   "text-raw-surrogate", "segment-js-url")}

    async def send(body):
        return await post(hx, "/workbench/api/messages", data=body,
                          headers={**hx.wb_clerk.headers, "Content-Type": "application/json"})

    await expect_refused(hx, subtests, cases, send)


async def test_content_type_is_not_trusted_the_body_decides(hx):
    """JSON endpoints read JSON whatever the header says (apps send text/plain), and refuse anything
    that is not JSON whatever the header says. Callbacks likewise parse their own format."""
    c = await hx.customer("u-ctype", "Ct")
    body = json.dumps({"text": "declared as text/plain", "client_msg_id": "ct-1"}).encode()
    for ctype in ("text/plain", "application/xml", "multipart/form-data; boundary=x", ""):
        status, _ = await post(hx, "/webchat/webchat/messages", data=body, headers={**c.headers, "Content-Type": ctype})
        assert status == 202, ctype
    await hx.wb_clerk.wait_for(lambda m: m["text"] == "【Ct #1】declared as text/plain")
    q, body = hx.wc.message_callback("zhangsan", "/help")
    assert (await post(hx, "/callbacks/wc", params=q, data=body, headers={"Content-Type": "application/json"}))[0] == 200


async def test_callbacks_refuse_other_methods_and_unknown_accounts(hx, subtests):
    before = await settled(hx.gw)
    for path in ("/callbacks/dt", "/callbacks/wc", "/callbacks/mp", "/callbacks/mpp"):
        for method in ("PUT", "DELETE", "PATCH") + (("GET",) if path == "/callbacks/dt" else ()):
            with subtests.test(path=path, method=method):
                async with hx.client.session.request(method, hx.base + path, data=b"<xml/>") as resp:
                    assert resp.status in (401, 405), await resp.text()  # MP checks the signature first
    for path in ("/callbacks/nope", "/callbacks/%2e%2e", "/callbacks/workbench", "/callbacks/webchat"):
        async with hx.client.session.post(hx.base + path, data=b"{}") as resp:
            assert 400 <= resp.status < 500 and resp.status != 413, path
    await assert_nothing_stored(hx.gw, before)


ORDER_CASES = {
    "empty": (b"", 400),
    "truncated": (b'{"order_id": "PO', 400),
    "array": (b"[]", 400),
    "bad-utf8": (b'{"order_id": "\xff"}', 400),
    "amount-text": (order_body(amount="twelve"), 422),
    "amount-negative": (order_body(amount="-1.00"), 422),
    "amount-3-places": (order_body(amount="1.001"), 422),
    "amount-nan": (order_body(amount="NaN"), 422),
    "amount-inf": (order_body(amount="Infinity"), 422),
    "naive-time": (order_body(placed_at="2026-01-05T10:00:00"), 422),
    "currency": (order_body(currency="USD"), 422),
    "channel": (order_body(channel="<script>"), 422),
    "extra-field": (order_body(evil=True), 422),
    "order-id-empty": (order_body(""), 422),
    "order-id-long": (order_body("P" * 129), 422),
    "order-id-surrogate": (order_body().replace(b'"PO-1"', b'"PO\\ud800"'), 422),
    "customer-both": (order_body(customer={"customer_id": 1, "channel": "webchat", "external_id": "x"}), 422),
}


async def test_orders_malformed_signed_bodies(hx, subtests):
    for expected in (400, 422):
        cases = {k: raw for k, (raw, status) in ORDER_CASES.items() if status == expected}

        async def send(raw):
            return await post(hx, "/api/v1/orders", headers=order_sig(raw), data=raw)

        await expect_refused(hx, subtests, cases, send, status=expected, code=("bad_request", "invalid"),
                             follow_up=expected == 422)
    raw = order_body("PO-ok")
    assert (await post(hx, "/api/v1/orders", headers=order_sig(raw), data=raw))[0] == 201


ADMIN_CASES = {
    "empty": (b"", 400),
    "truncated": (b'{"name": "x', 400),
    "array": (b'["name"]', 400),
    "form": (b"name=x", 400),
    "name-empty": (b'{"name": ""}', 422),
    "name-number": (b'{"name": 5}', 422),
    "name-surrogate": (b'{"name": "\\ud800"}', 422),
    "lat-inf": (b'{"name": "x", "lat": 1e999}', 422),
    "lat-nan": (b'{"name": "x", "lat": NaN}', 422),
    "extra": (b'{"name": "x", "evil": 1}', 422),
    "hours": (b'{"name": "x", "opening_hours": {"mon": "25:00-26:00"}}', 422),
}


async def test_admin_api_malformed_bodies(hx, subtests):
    stores = await n_rows(hx.gw, Store)
    headers = {"Authorization": f"Bearer {hx.admin}", "Content-Type": "application/json"}
    for expected in (400, 422):
        cases = {k: raw for k, (raw, status) in ADMIN_CASES.items() if status == expected}

        async def send(raw):
            return await post(hx, "/api/v1/stores", data=raw, headers=headers)

        await expect_refused(hx, subtests, cases, send, status=expected, code=("bad_request", "invalid"),
                             follow_up=expected == 422)
    assert await n_rows(hx.gw, Store) == stores
    assert (await post(hx, "/api/v1/stores", json_body={"name": "ok"}, headers=headers))[0] == 201


async def test_non_finite_numbers_never_reach_the_database(hx, subtests):
    """NaN / Infinity are not JSON: PostgreSQL's json column (where claims keep their events) refuses
    them, so they must be refused (webchat) or dropped (a platform's coordinates) before the claim."""
    c = await hx.customer("u-nan", "Nan")
    before = await settled(hx.gw)
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        with subtests.test(literal=literal):
            raw = b'{"client_msg_id": "n", "segments": [{"type": "location", "lat": %s, "lng": 1}]}' % literal
            status, answer = await post(hx, "/webchat/webchat/messages", data=raw, headers=c.headers)
            assert status == 400, answer
    await assert_nothing_stored(hx.gw, before)
    q, body = hx.mp.subscribe("oNan", scene=f"gw:{hx.invites['wb']}")
    assert await post(hx, "/callbacks/mp", params=q, data=body) == (200, b"success")
    for i, (lat, lng) in enumerate([(float("nan"), float("inf")), (1e999, -1e999)]):
        q, body = hx.mp.location("oNan", lat, lng, f"label {i}")
        assert await post(hx, "/callbacks/mp", params=q, data=body) == (200, b"success")
    await wait_until(lambda: n_rows(hx.gw, ChatMessage, ChatMessage.platform == "wechat_mp",
                                    ChatMessage.direction == "in"))
    await settled(hx.gw)
    async with hx.gw.db() as s:
        segs = (await s.execute(select(ChatMessage.segments).where(ChatMessage.platform == "wechat_mp",
                                                                   ChatMessage.direction == "in"))).scalars().all()
    assert [(g[0]["lat"], g[0]["lng"]) for g in segs] == [(None, None), (None, None)]
    assert await n_rows(hx.gw, InboundClaim, InboundClaim.status != "done") == 0


# == 3. bodies over server.max_body (1 MiB): 413, nothing stored ======================================

def big_body() -> bytes:
    return b'{"client_msg_id": "big", "text": "' + b"a" * TEN_MB + b'"}'


async def chunks(data: bytes, size: int = 256 * 1024):
    """A body sent with Transfer-Encoding: chunked, so no Content-Length warns the server."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def oversize_targets(hx) -> dict[str, tuple[str, dict | None, dict]]:
    """(path, query, headers) for every POST that takes a body, signed or authorised where the check
    comes before the body is read, so that only the size can be what is refused."""
    c = await hx.brand.login("u-big", "Big")
    return {
        "dingtalk-robot": ("/callbacks/dt", None, hx.dt.robot_callback(dtt.STAFF, "x")[0]),
        "dingtalk-event": ("/callbacks/dt", hx.dt.event_callback({"EventType": "check_url"})[0], {}),
        "wecom": ("/callbacks/wc", hx.wc.message_callback("zhangsan", "x")[0], {}),
        "wechat_mp-safe": ("/callbacks/mp", hx.mp.text("oBig", "x")[0], {}),
        "wechat_mp-plain": ("/callbacks/mpp", hx.mpp.text("oBig", "x")[0], {}),
        "webchat-session": ("/webchat/webchat/session", None, {}),
        "webchat-messages": ("/webchat/webchat/messages", None, c.headers),
        "webchat-bind": ("/webchat/webchat/bind", None, c.headers),
        "workbench-messages": ("/workbench/api/messages", None, hx.wb_clerk.headers),
        "orders": ("/api/v1/orders", None, order_sig(b"")),  # the signature is checked after reading
        "admin": ("/api/v1/stores", None, {"Authorization": f"Bearer {hx.admin}"}),
    }


async def test_ten_megabyte_bodies_are_413(hx, subtests):
    targets = await oversize_targets(hx)
    before = await settled(hx.gw)
    body = big_body()
    for chunked in (False, True):  # with a Content-Length, and chunked: only reading tells the size
        for name, (path, query, headers) in targets.items():
            with subtests.test(target=name, chunked=chunked):
                status, answer = await post(hx, path, params=query, data=chunks(body) if chunked else body,
                                            headers={**headers, "Content-Type": "application/json"})
                assert status == 413, answer[:200]
                assert json.loads(answer)["error"]["code"] == "too_large"
    await assert_nothing_stored(hx.gw, before)
    await still_serving(hx, "big")


async def test_a_body_just_under_the_limit_is_read(hx):
    """The limit is the configured one, not something smaller: a ~1 MiB callback is parsed (here:
    an unknown kind of message, acknowledged), a byte more is refused."""
    headers, body = hx.dt.robot_callback(dtt.STAFF, "x")
    msg = {**json.loads(body), "msgtype": "unknown"}
    pad = hx.gw.max_body - len(json.dumps({**msg, "pad": ""}).encode())
    fits = json.dumps({**msg, "pad": "p" * pad}).encode()
    assert len(fits) == hx.gw.max_body
    assert (await post(hx, "/callbacks/dt", headers=headers, data=fits))[0] == 200
    assert (await post(hx, "/callbacks/dt", headers=headers, data=fits + b" "))[0] == 413
    assert (await post(hx, "/callbacks/dt", headers=headers, data=chunks(fits + b" ", 4096)))[0] == 413


# == 4. unicode edge cases: relayed byte-exact as 【name #n】text, or a clear 400 =========================

UNICODE = {  # id: (customer name, message text); no leading/trailing whitespace (callbacks strip it)
    "zwj-emoji": ("👩‍👩‍👧‍👦 Zoë", "家庭套装有吗？👨‍👩‍👧 🏳️‍🌈 👍🏽 🧑🏿‍🤝‍🧑🏻"),
    "rtl": ("\u202eأحمد\u200f", "مرحبا \u200fabc\u202c \u2066ok\u2069"),
    "combining": ("Zoe\u0301 n\u0303", "e\u0301\u0301\u0301 Z\u0324\u0308a\u0336l\u0334g\u0338o"),
    "astral": ("𠜎𠜱𠝹", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀 𓀀 \U0010fffd"),
    "controls": ("Tab\tName", "bell\x07 esc\x1b[31m del\x7f end"),
    "zero-width": ("\u200b\u200d\ufeff", "\ufeffBOM and\u200bzero width\u2060joiner"),
    "noncharacters": ("\uffff\U0010ffff", "\ufdd0 \ufffe \U0001fffe end"),
    "line-separators": ("L\u2028S", "a\u2028b\u2029c\r\nd\re"),
    "long": ("龍" * 64, "名字很长" * 250),  # 64 characters is the name limit; a 1,000-character text
    "sql": ("Robert'); DROP TABLE customer;--", "'; DROP TABLE customer;-- % _ \\ \\\\ %% \\%"),
    "html": ("<img src=x onerror=alert(1)>", "<script>alert(1)</script>&lt;&amp;\"'<!-- -->]]>"),
    "markdown-and-template": ("{customer_name}", "**bold** [x](javascript:alert(1)) {advisor_name} %s %(x)s"),
}
# XML 1.0 cannot carry C0 controls (but tab, LF, CR), U+FFFE or U+FFFF; it turns CR LF into LF.
XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\r\ufffe\uffff]")


def xml_safe(text: str) -> bool:
    return not XML_UNSAFE.search(text)


async def collect(peer, wanted: set[str], timeout: float = 8.0) -> list[str]:
    """Texts a web peer (clerk workbench or customer page) received, until all of `wanted` are in."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not wanted <= set(got) and time.monotonic() < deadline:
        got += [m["text"] for m in await peer.fetch() if m["direction"] == "out"]
        await asyncio.sleep(0.05)
    return got


def relayed_as(name: str, n: int, text: str, cid: int | None = None) -> str:
    """What the clerk reads: the name cleaned for the label, the text with no label-like lines or
    bidi controls (gateway/labels.py); the customer's own stored text stays byte-exact."""
    return f"【{labels.clean_name(name) or f'顾客{cid}'} #{n}】{labels.neutralise(text)}"


async def test_unicode_names_and_texts_reach_the_workbench_clerk_byte_exact(hx, subtests, backend):
    expected = {}
    for i, (case, (name, text)) in enumerate(UNICODE.items(), start=1):
        c = await hx.customer(f"u-uni-{case}", name)
        status, _ = await c.say(text, client_msg_id=f"cm-{case}")
        assert status == 202, case
        cid = await customer_id(hx.gw, "webchat", f"u-uni-{case}")
        expected[case] = (f"u-uni-{case}", relayed_as(name, i, text, cid))
    got = await collect(hx.wb_clerk, {relayed for _, relayed in expected.values()})
    for case, (user, relayed) in expected.items():
        name, text = UNICODE[case]
        with subtests.test(case=case):
            assert got.count(relayed) == 1
            cid = await customer_id(hx.gw, "webchat", user)
            async with hx.gw.db() as s:
                assert (await s.get(Customer, cid)).name == labels.clean_name(name)
                stored = (await s.execute(select(ChatMessage.text).where(ChatMessage.customer_id == cid,
                                                                         ChatMessage.direction == "in"))).scalars()
                assert list(stored) == [text]


async def test_unicode_rejected_cleanly_never_500(hx, subtests):
    before = await settled(hx.gw)
    sessions = {"name-nul": b'"a\\u0000b"', "name-lone-high": b'"\\ud83d"', "name-lone-low": b'"x\\ude00"',
                "name-65": json.dumps("龍" * 65).encode(), "name-reversed-pair": b'"\\ude00\\ud83d"'}
    for case, name in sessions.items():
        with subtests.test(case=case):
            ts = int(time.time())
            sig = hmac.new(WEBCHAT_SECRET.encode(), f"u-x.{ts}".encode(), hashlib.sha256).hexdigest()
            raw = b'{"user_id": "u-x", "ts": %d, "sig": "%s", "name": %s}' % (ts, sig.encode(), name)
            status, answer = await post(hx, "/webchat/webchat/session", data=raw)
            assert status == 400, answer
    c = await hx.customer("u-uni-bad", "Bad")
    before = await settled(hx.gw)
    texts = {"nul": b'"a\\u0000b"', "lone-high": b'"\\ud83d"', "lone-low": b'"\\udc00x"', "too-long": json.dumps(
        "长" * 4001).encode(), "surrogate-bytes": b'"\xed\xb2\x80"', "overlong-utf8": b'"\xc0\xaf"',
        "utf8-beyond-unicode": b'"\xf4\x90\x80\x80"'}
    for case, text in texts.items():
        with subtests.test(case=case):
            raw = b'{"client_msg_id": "bad-%s", "text": %s}' % (case.encode(), text)
            status, answer = await post(hx, "/webchat/webchat/messages", data=raw, headers=c.headers)
            assert status == 400, answer
    await assert_nothing_stored(hx.gw, before)
    # a properly escaped surrogate *pair* is one astral character, and fine
    status, _ = await post(hx, "/webchat/webchat/messages", headers=c.headers,
                           data=b'{"client_msg_id": "pair", "text": "\\ud83d\\ude00"}')
    assert status == 202
    await hx.wb_clerk.wait_for(lambda m: m["text"] == "【Bad #1】😀")


NAME = "\u202eأحمد 👩‍👩‍👧‍👦 Zoe\u0301"  # RTL override, ZWJ family, a combining accent
# Through the work-IM platforms (both ways): the cases that differ in how JSON / XML carry them.
VIA_IM = {k: UNICODE[k] for k in ("zwj-emoji", "rtl", "combining", "astral", "controls", "noncharacters",
                                  "line-separators", "sql", "html")}


async def test_unicode_both_ways_with_a_dingtalk_clerk(hx, subtests):
    c = await hx.customer("u-dt-uni", NAME, "dt")
    for case, (_, text) in VIA_IM.items():
        assert (await c.say(text, client_msg_id=f"dt-{case}"))[0] == 202
    relayed = {case: relayed_as(NAME, 1, text) for case, (_, text) in VIA_IM.items()}
    await wait_until(lambda: set(relayed.values()) <= set(dtt.sim_texts(hx.dt)))
    for case, (_, text) in VIA_IM.items():  # and the clerk answers with the same text
        headers, body = hx.dt.robot_callback(dtt.STAFF, f"#1 {text}")
        assert (await post(hx, "/callbacks/dt", headers=headers, data=body))[0] == 200, case
    got = await collect(c, {text for _, text in VIA_IM.values()})
    for case, (_, text) in VIA_IM.items():
        with subtests.test(case=case):
            assert dtt.sim_texts(hx.dt).count(relayed[case]) == 1
            assert got.count(text) == 1


async def test_unicode_both_ways_with_a_wecom_clerk(hx, subtests):
    cases = {k: v[1] for k, v in VIA_IM.items() if xml_safe(v[1])}
    c = await hx.customer("u-wc-uni", NAME, "wc")
    for case, text in cases.items():
        assert (await c.say(text, client_msg_id=f"wc-{case}"))[0] == 202
    relayed = {case: relayed_as(NAME, 1, text) for case, text in cases.items()}
    await wait_until(lambda: set(relayed.values()) <= set(wct.texts_to(hx.wc)))
    for case, text in cases.items():
        q, body = hx.wc.message_callback("zhangsan", f"#1 {text}")
        assert (await post(hx, "/callbacks/wc", params=q, data=body))[0] == 200, case
    got = await collect(c, set(cases.values()))
    for case, text in cases.items():
        with subtests.test(case=case):
            assert wct.texts_to(hx.wc).count(relayed[case]) == 1
            assert got.count(text) == 1


async def test_unicode_from_an_official_account_customer(hx, subtests):
    cases = {k: v[1] for k, v in UNICODE.items() if xml_safe(v[1])}
    q, body = hx.mp.subscribe("oUnicode", scene=f"gw:{hx.invites['wb']}")
    assert await post(hx, "/callbacks/mp", params=q, data=body) == (200, b"success")
    for case, text in cases.items():
        q, body = hx.mp.text("oUnicode", text)
        assert await post(hx, "/callbacks/mp", params=q, data=body) == (200, b"success"), case
    got: list[str] = []

    async def relayed_all():
        got.extend(m["text"] for m in await hx.wb_clerk.fetch() if m["direction"] == "out")
        return all(any(t.endswith(f" #1】{labels.neutralise(text)}") for t in got) for text in cases.values())

    await wait_until(relayed_all)
    for case, text in cases.items():
        with subtests.test(case=case):
            assert sum(t.startswith("【") and t.endswith(f" #1】{labels.neutralise(text)}") for t in got) == 1
            assert await n_rows(hx.gw, ChatMessage, ChatMessage.platform == "wechat_mp",
                                ChatMessage.direction == "in", ChatMessage.text == text) == 1


# == 5. SQL-ish and HTML-ish input: literal everywhere ===============================================

SEARCH_NAMES = ["100%", "a_b", "back\\slash", "plain", "100 percent", "axb", "50%_\\", "O'Brien", "<b>bold</b>",
                "/slash/"]


SEARCHES = {  # ?q= -> the names it must find, and only those
    "%": ["100%", "50%_\\"],
    "_": ["a_b", "50%_\\"],
    "\\": ["back\\slash", "50%_\\"],
    "%_": ["50%_\\"],
    "a_b": ["a_b"],
    "/": ["/slash/", "<b>bold</b>"],  # "/" is SQLAlchemy's escape character for autoescape
    "'": ["O'Brien"],
    "'; DROP TABLE customer;--": [],
    "<b>": ["<b>bold</b>"],
    "[a-z]": [],  # not a character class either
}


async def test_customer_search_treats_like_wildcards_literally(hx, subtests, backend):
    async with hx.gw.db() as s:
        s.add_all([Customer(name=n) for n in SEARCH_NAMES])
        await s.commit()
    for q, hits in SEARCHES.items():
        with subtests.test(q=q):
            async with hx.client.session.get(hx.base + "/api/v1/customers", params={"q": q},
                                             headers={"Authorization": f"Bearer {hx.admin}"}) as resp:
                assert resp.status == 200
                names = [c["name"] for c in (await resp.json())["items"]]
            assert sorted(names) == sorted(hits)
    assert await n_rows(hx.gw, Customer) == len(SEARCH_NAMES)  # and the table is still there


async def test_sql_and_html_are_stored_and_relayed_literally(hx):
    name, text = "Robert'); DROP TABLE customer;--", "<script>alert(1)</script>' OR '1'='1"
    c = await hx.customer("u-sqli", name)
    name = labels.clean_name(name)  # literal, and like every name cut to 20 characters
    assert (await c.say(text))[0] == 202
    await hx.wb_clerk.wait_for(lambda m: m["text"] == f"【{name} #1】{text}")
    await hx.wb_clerk.say(f"#1 收到：{text}")
    got = await c.wait_for(lambda m: m["text"] == f"收到：{text}")
    assert got["sender"] == {"name": "晨晨"}
    async with hx.client.session.get(hx.base + f"/api/v1/customers/{await customer_id(hx.gw, 'webchat', 'u-sqli')}",
                                     headers={"Authorization": f"Bearer {hx.admin}"}) as resp:
        assert resp.status == 200 and (await resp.json())["name"] == name
    # every table is still there and still answers
    assert all(v >= 0 for v in (await counts(hx.gw)).values())
    assert (await hx.wb_clerk.customers())[0]["name"] == name


PAGES = [ROOT / "adapters" / "static" / "webim.js", ROOT / "adapters" / "webchat" / "static" / "index.html",
         ROOT / "adapters" / "workbench" / "static" / "index.html", ROOT / "gateway" / "static" / "console.html"]
# Ways a page could turn data into markup or code.
SINKS = re.compile(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\s*\(|new\s+Function\s*\("
                   r"|createContextualFragment|\bsrcdoc\b|DOMParser|setAttribute\(\s*['\"]on|\.on\w+\s*=\s*['\"`]"
                   r"|\bjavascript:|setTimeout\(\s*['\"`]|setInterval\(\s*['\"`]")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_pages_never_turn_data_into_markup(page):
    """Names and texts reach the DOM through textContent / createTextNode only (checked in the source)."""
    source = page.read_text(encoding="utf-8")
    assert not [m.group(0) for m in SINKS.finditer(source)]


def test_the_shared_renderer_uses_text_content_and_vets_urls():
    js = (ROOT / "adapters" / "static" / "webim.js").read_text(encoding="utf-8")
    assert "e.textContent = String(text)" in js  # el(): the one place text meets the DOM
    # links and images only take http(s) (and data:image for pictures): no javascript: URLs
    assert "x.protocol === 'http:' || x.protocol === 'https:'" in js and "/^data:image\\//i" in js
    # every href / src is assigned a value that came out of safeUrl() (u, url, img in segment() and link())
    assert re.findall(r"\.(?:href|src)\s*=\s*(\w+)", js) == ["url", "u", "img"]
    assert re.findall(r"(?<!function )\blink\((\w+)", js) == ["u", "u", "u"]


# == 6. findings outside the adapters (fixed in gateway/: api.py, app.py, ingress.py) ===================
# These use the plain conftest gateway (webchat + workbench): the core API is the same.

@pytest.fixture
async def api(gw, client, world):
    gw.config.orders.webhook_secret = ORDER_SECRET
    return client, world.admin_token


async def test_core_orders_non_ascii_signature_is_401(api, gw):
    client, _ = api
    before = await counts(gw)
    resp = await client.post("/api/v1/orders", data=order_body("PO-utf8"), headers={"X-Gateway-Signature": "签名"})
    assert await counts(gw) == before
    assert resp.status == 401


@pytest.mark.parametrize("path", ["/api/v1/stores", "/api/v1/orders"])
async def test_core_deeply_nested_json_is_400(api, path):
    client, admin = api
    headers = order_sig(DEEP_JSON) if path.endswith("orders") else {"Authorization": f"Bearer {admin}"}
    resp = await client.post(path, data=DEEP_JSON, headers=headers)
    assert resp.status == 400


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_core_nul_in_admin_text_is_422(api, backend):
    client, admin = api
    resp = await client.post("/api/v1/stores", json={"name": "a\x00b"}, headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 422


NUL_PATHS = ["/api/v1/customers?q=a%00b", "/api/v1/interactions?type=a%00b", "/api/v1/invites/a%00b/qr.png",
             "/i/a%00b", "/i/a%00b/qr.svg", "/t/a%00b", "/webchat/webchat/invites/a%00b"]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_core_nul_in_paths_and_queries_is_400(api, backend):
    from yarl import URL

    client, admin = api
    token = (await BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat",
                            WEBCHAT_SECRET).login("u-nul")).token
    bad = []
    for path in NUL_PATHS:
        auth = token if path.startswith("/webchat") else admin
        async with client.session.get(URL(str(client.make_url("")).rstrip("/") + path, encoded=True),
                                      headers={"Authorization": f"Bearer {auth}"}, allow_redirects=False) as resp:
            if resp.status not in (400, 404):
                bad.append((path, resp.status))
    assert bad == []


async def test_core_long_distinct_idempotency_keys_are_not_merged(client, gw, world):
    brand = BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)
    c = await brand.login("u" * 128, "Long")
    await c.bind(world.invite)
    for tail in ("A", "B"):
        status, body = await c.say(f"message {tail}", client_msg_id="c" * 127 + tail)
        assert status == 202
    await wait_until(lambda: n_rows(gw, ChatMessage, ChatMessage.text == "message A"))
    await settled(gw)
    assert await n_rows(gw, ChatMessage, ChatMessage.text == "message B") == 1
