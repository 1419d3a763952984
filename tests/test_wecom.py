"""WeCom end to end on its simulator: the published URL-check vector, forged callbacks, a scan that
binds and welcomes, relay both ways, replays, mass tasks within the per-customer cap, and a resigned
clerk's customers transferred through WeCom."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func
from sqlmodel import select

from adapters.webchat.simulator import BrandApp
from adapters.wecom.simulator import WeComSimulator
from gateway import advisors
from gateway.adapter import Deferred, Permanent
from gateway.app import create_app
from gateway.model import Identity, Message, Target
from gateway.models import (
    Binding,
    ChatMessage,
    Clerk,
    ClerkIdentity,
    Customer,
    InboundClaim,
    Interaction,
    Outbox,
    QueueEntry,
    Store,
    Transfer,
)
from gateway.models import Identity as IdentityRow
from gateway.outbox import cap_period
from gateway.runtime import Gateway
from tests.conftest import WEBCHAT_SECRET, make_config, wait_until

CORP, AGENT, SECRET, TOKEN = "ww0123456789abcdef", "1000002", "wecom-app-secret", "wecomtoken"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
VECTOR = dict(msg_signature="dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", timestamp="1411443780", nonce="437374425",
              echostr="4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==")


def account(api_base: str, **kw) -> dict:
    return {"name": "wc", "platform": "wecom", "corp_id": CORP, "agent_id": AGENT, "secret": SECRET, "token": TOKEN,
            "encoding_aes_key": AES_KEY, "api_base": api_base, "timeout": 2, "poll_interval": 3600, **kw}


@pytest.fixture
def sim():
    return WeComSimulator(corp_id=CORP, agent_id=AGENT, secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY,
                          members=["zhangsan", "lisi", "wangwu"])


async def build(sim, aiohttp_server, aiohttp_client, db_url, *, policies=None, **acc):
    server = await aiohttp_server(sim.app())
    cfg = make_config(db_url, accounts=[account(str(server.make_url("")).rstrip("/"), **acc),
                                        {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET}],
                      outbox={"poll_interval": 0.05, "backoff_base": 0.05}, policies={"quiet_hours": None, **(policies or {})})  # pushes at any hour of the run
    gw = Gateway(cfg)
    client = await aiohttp_client(create_app(gw))
    gw.config.server.public_url = str(client.make_url("")).rstrip("/")
    async with gw.db() as s:
        store = Store(name="静安店")
        s.add(store)
        await s.flush()
        lin = Clerk(name="林小雨", display_name="小林", store_id=store.id)
        fang = Clerk(name="王芳", display_name="芳芳", store_id=store.id)
        s.add_all([lin, fang])
        await s.flush()
        s.add_all([ClerkIdentity(clerk_id=lin.id, platform="wecom", account="wc", external_id="zhangsan"),
                   ClerkIdentity(clerk_id=fang.id, platform="wecom", account="wc", external_id="lisi")])
        invite = await advisors.create_invite(s, lin.id, source="counter")
        await s.commit()
    brand = BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)
    return gw, client, brand, invite.code, lin.id, fang.id


@pytest.fixture
async def wc(sim, aiohttp_server, aiohttp_client, db_url):
    return await build(sim, aiohttp_server, aiohttp_client, db_url)


async def count(gw, model, *where):
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def post(client, qb):
    query, body = qb
    return await client.post("/callbacks/wc", params=query, data=body)


def texts_to(sim, user="zhangsan") -> list[str]:
    return [m["payload"].get("content", "") for m in sim.delivered if m["user"] == user and m["msgtype"] == "text"]


async def open_binding(gw, customer_id):
    async with gw.db() as s:
        return (await s.exec(select(Binding).where(Binding.customer_id == customer_id, Binding.valid_to.is_(None)))).first()


async def customer_of(gw, external_id):
    async with gw.db() as s:
        row = (await s.exec(select(IdentityRow).where(IdentityRow.platform == "wecom",
                                                       IdentityRow.external_id == external_id))).first()
        return row.customer_id if row else None


async def scan(gw, client, sim, ext, invite, member="zhangsan", **kw):
    resp = await post(client, sim.add_external_contact(member, ext, state=f"gw:{invite}", **kw))
    assert resp.status == 200 and await resp.read() == b""
    await wait_until(lambda: customer_of(gw, ext))
    cid = await customer_of(gw, ext)
    await wait_until(lambda: open_binding(gw, cid))
    return cid


# -- the callback URL ----------------------------------------------------------------------------------


async def test_published_wechatpy_vector_through_the_callback_url(aiohttp_client, db_url):
    """PLATFORM_RULES.md: wechatpy's enterprise vector comes back as the bare plaintext."""
    cfg = make_config(db_url, accounts=[{**account("http://127.0.0.1:9"), "corp_id": "wx49f0ab532d5d035a",
                                         "token": "123456"}])
    gw = Gateway(cfg)
    client = await aiohttp_client(create_app(gw))
    resp = await client.get("/callbacks/wc", params=VECTOR)
    assert resp.status == 200 and await resp.read() == b"5927782489442352469"
    bad = await client.get("/callbacks/wc", params={**VECTOR, "msg_signature": "0" * 40})
    assert bad.status == 401
    assert await count(gw, InboundClaim) == 0
    await gw.engine.dispose()


async def test_wrong_corp_id_and_forged_posts_are_401_and_store_nothing(wc, sim, aiohttp_client, db_url):
    gw, client, *_ = wc
    other = Gateway(make_config(db_url, accounts=[{**account("http://127.0.0.1:9"), "corp_id": "wwsomeoneelse0001"}]))
    other_client = await aiohttp_client(create_app(other))
    query, _ = sim.url_check()
    assert (await other_client.get("/callbacks/wc", params=query)).status == 401  # ReceiveId is not this corp
    assert (await other_client.post("/callbacks/wc", params=sim.message_callback("zhangsan", "hi")[0],
                                    data=sim.message_callback("zhangsan", "hi")[1])).status == 401
    query, body = sim.message_callback("zhangsan", "hello")
    assert (await client.post("/callbacks/wc", params={**query, "msg_signature": "f" * 40}, data=body)).status == 401
    assert (await client.post("/callbacks/wc", params=query, data=b"<xml><Encrypt>")).status == 400
    assert (await client.post("/callbacks/wc", params=query, data=b"<!DOCTYPE x [<!ENTITY a \"b\">]><xml>&a;</xml>")
            ).status == 400
    assert (await client.post("/callbacks/wc", params=query, data=b"x" * (2 << 20))).status == 413
    assert await count(gw, InboundClaim) == 0 and await count(other, InboundClaim) == 0
    q2, expected = sim.url_check()
    resp = await client.get("/callbacks/wc", params=q2)
    assert resp.status == 200 and await resp.text() == expected
    await other.engine.dispose()


# -- scan, bind, welcome ------------------------------------------------------------------------------


async def test_scan_with_state_binds_and_welcomes_once_within_20s(wc, sim, backend):
    gw, client, _, invite, lin, _ = wc
    qr = await client.get(f"/wecom/wc/contact/{invite}", allow_redirects=False)
    assert qr.status == 302
    way = next(iter(sim.contact_ways.values()))
    assert way["state"] == f"gw:{invite}" and len(way["state"]) <= 30 and way["user"] == ["zhangsan"]
    again = await client.get(f"/wecom/wc/contact/{invite}", allow_redirects=False)
    assert again.headers["Location"] == qr.headers["Location"]  # made once, remembered on the invite
    await wait_until(lambda: len(sim.contact_ways) == 1)

    event = sim.add_external_contact("zhangsan", "wmCust0001", state=f"gw:{invite}", name="Alice", unionid="oUnion1")
    resp = await post(client, event)
    assert resp.status == 200 and await resp.read() == b""
    await wait_until(lambda: len(sim.welcomes["wmCust0001"]) == 1)
    assert "我是小林" in sim.welcomes["wmCust0001"][0]["text"]["content"]
    cid = await customer_of(gw, "wmCust0001")
    b = await open_binding(gw, cid)
    assert b.clerk_id == lin and b.source == "invite:counter"
    await wait_until(lambda: any("新顾客绑定" in t for t in texts_to(sim)))
    # the profile arrives after the ack: name and unionid on the identity
    async def has_unionid():
        async with gw.db() as s:
            return (await s.exec(select(IdentityRow.unionid).where(IdentityRow.customer_id == cid))).first() == "oUnion1"
    await wait_until(has_unionid)
    async with gw.db() as s:
        scan_log = (await s.exec(select(Interaction).where(Interaction.type == "bound"))).one()
        assert scan_log.payload["channel"] == "wecom" and scan_log.payload["consent_how"]

    assert (await post(client, event)).status == 200  # WeCom retries the same event: processed once
    await asyncio.sleep(0.3)
    assert len(sim.welcomes["wmCust0001"]) == 1
    assert await count(gw, Binding, Binding.customer_id == cid) == 1
    assert await count(gw, InboundClaim, InboundClaim.platform == "wecom",
                       InboundClaim.dedupe_key.like("evt:change_external_contact:add_external_contact%")) == 1


async def test_contact_added_without_our_state_binds_to_the_member(wc, sim):
    gw, client, _, _, lin, _ = wc
    assert (await post(client, sim.add_external_contact("zhangsan", "wmWalkIn", state="from-other-tool"))).status == 200
    await wait_until(lambda: customer_of(gw, "wmWalkIn"))
    cid = await customer_of(gw, "wmWalkIn")
    await wait_until(lambda: open_binding(gw, cid))
    assert (await open_binding(gw, cid)).source == "contact"


async def test_welcome_rules_at_the_adapter(wc):
    gw, *_ = wc
    adapter = gw.adapters["wc"]
    target = Target(Identity("wecom", "wc", "wmX"), customer_id=1, clerk_id=1)
    with pytest.raises(Permanent) as e:
        await adapter.send(target, Message.of_text("hi"), idem_key="k1", kind="welcome")
    assert e.value.code == "no_welcome_code" and e.value.hold
    late = Target(target.identity, 1, 1, hints={"reply_token": "code", "reply_by":
                                                (datetime.now(UTC) - timedelta(seconds=1)).isoformat()})
    with pytest.raises(Permanent) as e:
        await adapter.send(late, Message.of_text("hi"), idem_key="k2", kind="welcome")
    assert e.value.code == "welcome_expired"


async def test_welcome_already_sent_41051_counts_as_done(wc, sim):
    gw, client, _, invite, *_ = wc
    sim.add_external_contact("zhangsan", "wmTwice", state=f"gw:{invite}")
    code = sim.last_welcome_code
    adapter = gw.adapters["wc"]
    target = Target(Identity("wecom", "wc", "wmTwice"), 1, 1, hints={"reply_token": code})
    first = await adapter.send(target, Message.of_text("您好"), idem_key="w1", kind="welcome")
    second = await adapter.send(target, Message.of_text("您好"), idem_key="w1", kind="welcome")  # answer was lost
    assert first.delivered and second.delivered and len(sim.welcomes["wmTwice"]) == 1


# -- chatting --------------------------------------------------------------------------------------------


async def test_webchat_customer_and_wecom_clerk_chat_both_ways(wc, sim, backend):
    gw, client, brand, invite, *_ = wc
    alice = await brand.login("u-alice", "Alice")
    await alice.bind(invite)
    await alice.say("有37码吗")
    await wait_until(lambda: "【Alice #1】有37码吗" in texts_to(sim))

    query, body = sim.message_callback("zhangsan", "#1 有的，给您留一双")
    assert (await client.post("/callbacks/wc", params=query, data=body)).status == 200
    assert (await client.post("/callbacks/wc", params=query, data=body)).status == 200  # a retry: once
    reply = await alice.wait_for(lambda m: m["text"] == "有的，给您留一双")
    assert reply["sender"] == {"name": "小林"}
    await wait_until(lambda: any(t.startswith("→ 已发送给 Alice #1") for t in texts_to(sim)))
    await asyncio.sleep(0.3)
    assert await count(gw, ChatMessage, ChatMessage.text == "有的，给您留一双", ChatMessage.direction == "out") == 1

    media = sim.add_media(b"\x89PNG fake", "image/png")
    query, body = sim.message_callback("zhangsan", msgtype="image", MediaId=media, PicUrl="http://p.qpic.cn/x")
    assert (await client.post("/callbacks/wc", params=query, data=body)).status == 200
    img = await alice.wait_for(lambda m: any(s["type"] == "image" for s in m.get("segments", [])))
    url = next(s["url"] for s in img["segments"] if s["type"] == "image")
    got = await client.session.get(url)
    assert got.status == 200 and await got.read() == b"\x89PNG fake"
    assert sim.dropped == []


async def test_a_renamed_member_is_still_the_clerk(wc, sim, backend):
    """Issue 16: an admin changes a member's UserID (change_contact / update_user with NewUserID). The
    clerk's later messages carry the new id; they used to come from "a stranger" and were lost."""
    gw, client, brand, invite, lin, _ = wc
    alice = await brand.login("u-alice", "Alice")
    await alice.bind(invite)
    await alice.say("在吗")
    await wait_until(lambda: "【Alice #1】在吗" in texts_to(sim))
    assert (await post(client, sim.rename_user("zhangsan", "zhangsan001"))).status == 200

    async def renamed():
        async with gw.db() as s:
            row = (await s.exec(select(ClerkIdentity).where(ClerkIdentity.clerk_id == lin))).one()
            return row.external_id == "zhangsan001"

    await wait_until(renamed)
    assert (await post(client, sim.message_callback("zhangsan001", "#1 在的"))).status == 200
    await alice.wait_for(lambda m: m["text"] == "在的")
    await wait_until(lambda: any(t.startswith("→ 已发送给 Alice #1") for t in texts_to(sim, "zhangsan001")))
    await alice.say("好的")  # and the customer's next message reaches the clerk under the new id
    await wait_until(lambda: "【Alice #1】好的" in texts_to(sim, "zhangsan001"))
    assert not any("还不是本品牌的导购" in t for t in texts_to(sim, "zhangsan001"))


async def test_a_rename_onto_another_clerks_id_moves_nothing(wc, sim):
    gw, client, _, _, lin, fang = wc
    assert (await post(client, sim.rename_user("zhangsan", "lisi"))).status == 200  # lisi is fang's
    await wait_until(lambda: count(gw, InboundClaim, InboundClaim.status == "done"))
    async with gw.db() as s:
        rows = dict((await s.execute(select(ClerkIdentity.clerk_id, ClerkIdentity.external_id))).all())
    assert rows == {lin: "zhangsan", fang: "lisi"}


async def test_clerk_reply_to_a_wechat_contact_becomes_a_task_then_delivered(wc, sim):
    gw, client, _, invite, *_ = wc
    cid = await scan(gw, client, sim, "wmCust0002", invite, name="Bob")
    n = 1
    query, body = sim.message_callback("zhangsan", f"#{n} 新品到了，来看看")
    assert (await client.post("/callbacks/wc", params=query, data=body)).status == 200
    await wait_until(lambda: any(t["sender"] == "zhangsan" for t in sim.tasks.values()))
    msgid, task = next((k, t) for k, t in sim.tasks.items() if t["sender"] == "zhangsan")
    assert list(task["results"]) == ["wmCust0002"] and "新品到了" in task["text"]["content"]
    await wait_until(lambda: any("群发任务" in t for t in texts_to(sim)))  # the clerk is told to confirm
    sim.confirm_task(msgid)
    await wait_until(lambda: count(gw, ChatMessage, ChatMessage.platform_msg_id == msgid, ChatMessage.status == "sent"))
    assert await gw.adapters["wc"].poll_once() >= 1
    await wait_until(lambda: count(gw, ChatMessage, ChatMessage.customer_id == cid,
                                   ChatMessage.platform_msg_id == msgid, ChatMessage.status == "delivered"))


# -- mass pushes and the per-customer cap -------------------------------------------------------------


async def test_mass_push_over_the_monthly_cap_is_held_with_the_reason(wc, sim, backend):
    gw, client, _, invite, lin, _ = wc
    full = await scan(gw, client, sim, "wmFull", invite)
    fresh = await scan(gw, client, sim, "wmFresh", invite)
    now = gw.clock.now()
    start, limit = cap_period(("month", None), now, gw.tz)
    assert 28 <= limit <= 31
    async with gw.db() as s:  # earlier pushes this month used up wmFull's quota
        for i in range(limit):
            s.add(Outbox(idem_key=f"earlier:{i}", platform="wecom", account="wc", target={}, message={}, kind="push",
                         status="sent", customer_id=full, created_at=start + timedelta(minutes=i)))
        await s.commit()
    async with gw.db() as s:
        clerk = await s.get(Clerk, lin)
        for cid in (full, fresh):
            target = await advisors.customer_target(s, await s.get(Customer, cid), clerk)
            await gw.outbox.enqueue(s, target, Message.of_text("双十二新品 8 折"), idem_key=f"push:{cid}", kind="push")
        await s.commit()
    gw.outbox.kick()
    await wait_until(lambda: any(list(t["results"]) == ["wmFresh"] for t in sim.tasks.values()))
    async with gw.db() as s:
        held = (await s.exec(select(Outbox).where(Outbox.idem_key == f"push:{full}"))).one()
        log = (await s.exec(select(Interaction).where(Interaction.type == "push_held",
                                                      Interaction.customer_id == full))).one()
    assert held.status == "held" and held.error_code == "platform_cap" and f"{limit} pushes" in held.last_error
    assert log.payload["code"] == "platform_cap"
    assert not any("wmFull" in t["results"] for t in sim.tasks.values())


def test_cap_periods_follow_the_configured_zone():
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 2, 28, 17, 0, tzinfo=UTC)  # 1 March 01:00 in Shanghai
    start, limit = cap_period(("month", None), now, tz)
    assert start.isoformat() == "2026-03-01T00:00:00+08:00" and limit == 31
    start, limit = cap_period(("week", 7), now, tz)
    assert start.isoformat() == "2026-02-23T00:00:00+08:00" and limit == 7
    assert cap_period(("day", 1), now, tz) == (datetime(2026, 3, 1, tzinfo=tz), 1)


# -- app-message cap per member -------------------------------------------------------------------------


async def test_member_quota_holds_the_31st_message_of_a_minute_and_the_1001st_of_an_hour(db_url, backend):
    from gateway.clock import FakeClock
    from gateway.db import make_engine, session_factory
    from gateway.quota import SendQuota, Window

    clock = FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    engine = make_engine(db_url)
    quota = SendQuota(session_factory(engine), clock)
    minute, hour = timedelta(minutes=1), timedelta(hours=1)

    def windows(per_minute=30, per_hour=1000):
        now = clock.now()
        return [Window(now - minute, per_minute, minute), Window(now - hour, per_hour, hour)]

    try:
        start = clock.now()
        for _ in range(30):
            assert await quota.take("u", windows()) is None
            clock.advance(seconds=1)
        full = await quota.take("u", windows())  # at start + 30 s
        assert full.window == 0 and full.frees_at == start + minute  # the first of the 30 leaves at +60 s
        assert await quota.take("v", windows()) is None  # per member
        clock.set(start + minute)
        assert await quota.take("u", windows()) is None
        assert (await quota.take("u", windows(), n=2)).window == 0  # a split message goes whole or waits
        clock.set(start + 2 * hour)
        for _ in range(10):
            assert await quota.take("h", windows(per_hour=10)) is None
            clock.advance(seconds=3)
        full = await quota.take("h", windows(per_hour=10))
        assert full.window == 1 and full.frees_at == start + 2 * hour + hour
    finally:
        await engine.dispose()


async def test_a_burst_to_one_clerk_waits_instead_of_being_dropped(wc, sim):
    gw, *_ = wc
    adapter = gw.adapters["wc"]
    target = Target(Identity("wecom", "wc", "zhangsan"), clerk_id=1)
    for i in range(30):
        await adapter.send(target, Message.of_text(f"n{i}"), idem_key=f"b{i}", kind="notice")
    with pytest.raises(Deferred) as e:
        await adapter.send(target, Message.of_text("n30"), idem_key="b30", kind="notice")
    assert 0 < e.value.retry_after <= 60
    assert len(texts_to(sim)) == 30 and sim.dropped == []


# -- handover through WeCom ----------------------------------------------------------------------------


async def test_resigned_clerks_customers_reach_a_colleague_after_transfer_result_done(
        sim, aiohttp_server, aiohttp_client, db_url, backend):
    gw, client, _, invite, lin, fang = await build(sim, aiohttp_server, aiohttp_client, db_url,
                                                   policies={"handover": "least_loaded"})
    a = await scan(gw, client, sim, "wmA", invite)
    b = await scan(gw, client, sim, "wmB", invite)
    assert (await post(client, sim.delete_user("zhangsan"))).status == 200
    await wait_until(lambda: len(sim.transfers) == 2)
    assert all(t["handover_userid"] == "zhangsan" and t["takeover_userid"] == "lisi" for t in sim.transfers)
    assert sim.calls["/cgi-bin/externalcontact/resigned/transfer_customer"] == 1  # both in one call (≤ 100)
    assert (await open_binding(gw, a)).clerk_id == lin  # nothing moves before WeCom says so
    assert await gw.adapters["wc"].poll_once() == 0  # still waiting

    sim.settle_transfer("wmA", 1)
    sim.settle_transfer("wmB", 3)  # B refused
    assert await gw.adapters["wc"].poll_once() == 2
    await wait_until(lambda: _both(gw))
    new = await open_binding(gw, a)
    assert new.clerk_id == fang and new.source == "handover:wecom"
    async with gw.db() as s:
        old = (await s.exec(select(Binding).where(Binding.customer_id == a, Binding.clerk_id == lin))).one()
        assert old.end_reason == "handover" and old.valid_to == new.valid_from
        assert (await s.get(Clerk, lin)).status == "left"
        queued = (await s.exec(select(QueueEntry).where(QueueEntry.customer_id == b))).one()
        assert queued.reason == "transfer_refused"
    assert (await open_binding(gw, b)).clerk_id == lin  # refused: the binding did not move
    assert await gw.adapters["wc"].poll_once() == 0  # finished transfers are not polled again


async def _both(gw):
    return await count(gw, Transfer, Transfer.status.in_(("done", "refused"))) == 2


async def test_leave_api_with_successor_and_the_customer_removing_the_advisor(wc, sim):
    gw, client, _, invite, lin, fang = wc
    from gateway.tokens import create_token

    async with gw.db() as s:
        _, admin = await create_token(s, "admin")
        await s.commit()
    a = await scan(gw, client, sim, "wmLeaveA", invite)
    gone = await scan(gw, client, sim, "wmGone", invite)
    assert (await post(client, sim.del_follow_user("zhangsan", "wmGone"))).status == 200
    await wait_until(lambda: _closed(gw, gone))
    async with gw.db() as s:
        ended = (await s.exec(select(Binding).where(Binding.customer_id == gone))).one()
    assert ended.end_reason == "customer_removed_advisor"

    resp = await client.post(f"/api/v1/clerks/{lin}/leave", json={"successor_id": fang},
                             headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["customers"] == {"transfer_requested": 1}
    await wait_until(lambda: len(sim.transfers) == 1)
    assert sim.transfers[0]["takeover_userid"] == "lisi" and "芳芳" in sim.transfers[0]["transfer_success_msg"]
    sim.settle_all(1)
    await gw.adapters["wc"].poll_once()
    await wait_until(lambda: _bound_to(gw, a, fang))


async def _closed(gw, cid):
    return await open_binding(gw, cid) is None


async def _bound_to(gw, cid, clerk_id):
    b = await open_binding(gw, cid)
    return b is not None and b.clerk_id == clerk_id



async def test_a_transfer_wecom_refuses_queues_the_customer_instead_of_stranding_them(wc, sim):
    gw, client, _, invite, lin, fang = wc
    from gateway.tokens import create_token

    async with gw.db() as s:
        _, admin = await create_token(s, "admin")
        await s.commit()
    cid = await scan(gw, client, sim, "wmStale", invite)
    sim.del_follow_user("zhangsan", "wmStale")  # gone on WeCom; the gateway was not told
    resp = await client.post(f"/api/v1/customers/{cid}/transfer", json={"clerk_id": fang},
                             headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200 and (await resp.json())["status"] == "transfer_requested"
    await wait_until(lambda: count(gw, Transfer, Transfer.status == "failed"))
    async with gw.db() as s:
        t = (await s.exec(select(Transfer))).one()
        queued = (await s.exec(select(QueueEntry).where(QueueEntry.customer_id == cid))).one()
        log = (await s.exec(select(Interaction).where(Interaction.type == "handover"))).all()
    assert not t.resigned and "errcode" in t.reason and queued.reason == "transfer_failed"
    assert [entry.payload["status"] for entry in log] == ["transfer_requested", "failed"]
    assert (await open_binding(gw, cid)).clerk_id == lin


async def test_in_service_transfers_stop_at_two_in_90_days(wc, sim):
    gw, client, _, invite, lin, fang = wc
    cid = await scan(gw, client, sim, "wmMover", invite)
    from gateway import handover

    async with gw.db() as s:
        for i in range(2):
            s.add(Transfer(customer_id=cid, from_clerk_id=lin, to_clerk_id=fang, platform="wecom", account="wc",
                           external_id="wmMover", handover_user="zhangsan", takeover_user="lisi", status="done",
                           requested_at=gw.clock.now() - timedelta(days=10 * (i + 1))))
        await s.commit()
    async with gw.db() as s:
        b, clerk = await advisors.open_binding(s, cid)
        outcome = await handover.hand_one(s, gw, b, await s.get(Customer, cid), clerk, await s.get(Clerk, fang),
                                          now=gw.clock.now(), resigned=False, reason="test")
        await s.commit()
    assert outcome == "queued" and sim.transfers == []
    assert await count(gw, Transfer) == 2


def test_codec_splits_long_text_and_renders_cards():
    from adapters.wecom import codec
    from gateway.model import Segment

    long = "好" * 1000  # 3,000 bytes
    parts = codec.app_messages(Message.of_text(long))
    assert [p["msgtype"] for p in parts] == ["text", "text"]
    assert "".join(p["text"]["content"] for p in parts) == long
    assert all(len(p["text"]["content"].encode()) <= 2048 for p in parts)
    product = Segment("product", {"name": "羊绒大衣", "price": "1299.00", "url": "https://shop/x", "image_url": "https://i/x.jpg"})
    msg = Message([Segment.text("新品"), product])
    assert [p["msgtype"] for p in codec.app_messages(msg)] == ["text", "news"]
    assert codec.app_messages(msg)[1]["news"]["articles"][0]["picurl"] == "https://i/x.jpg"
    brief = codec.app_messages(msg, markdown=True)
    assert brief == [{"msgtype": "markdown", "markdown": {"content": "新品\n\n[羊绒大衣](https://shop/x) ¥1299.00"}}]
    content = codec.customer_content(msg)
    assert content["text"] == {"content": "新品"} and content["attachments"][0]["link"]["url"] == "https://shop/x"


async def test_qr_command_gives_a_wecom_clerk_their_contact_qr(wc, sim):
    gw, client, _, invite, *_ = wc
    query, body = sim.message_callback("zhangsan", "/qr")
    assert (await client.post("/callbacks/wc", params=query, data=body)).status == 200
    await wait_until(lambda: any("/wecom/wc/contact/" in t for t in texts_to(sim)))
    url = next(t for t in texts_to(sim) if "/wecom/wc/contact/" in t).split("/wecom/wc/contact/")[1].split()[0]
    resp = await client.get(f"/wecom/wc/contact/{url}", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"].startswith("https://")



async def test_a_push_to_several_contacts_of_one_clerk_is_one_task_to_confirm(wc, sim):
    gw, client, _, invite, lin, _ = wc
    cids = [await scan(gw, client, sim, f"wmMany{i}", invite) for i in range(3)]
    async with gw.db() as s:
        clerk = await s.get(Clerk, lin)
        for cid in cids:
            target = await advisors.customer_target(s, await s.get(Customer, cid), clerk)
            await gw.outbox.enqueue(s, target, Message.of_text("周末会员日"), idem_key=f"many:{cid}", kind="push")
        await s.commit()
    gw.outbox.kick()
    await wait_until(lambda: _all_sent(gw, "many:%", 3))
    tasks = [t for t in sim.tasks.values() if "周末会员日" in t["text"]["content"]]
    assert len(tasks) == 1 and sorted(tasks[0]["results"]) == ["wmMany0", "wmMany1", "wmMany2"]
    sim.confirm_task(tasks[0]["msgid"])
    assert await gw.adapters["wc"].poll_once() == 3
    await wait_until(lambda: _n_is(gw, Interaction, 3, Interaction.type == "push_sent"))


async def _all_sent(gw, pattern, n):
    return await count(gw, Outbox, Outbox.idem_key.like(pattern), Outbox.status == "sent") == n


async def _n_is(gw, model, n, *where):
    return await count(gw, model, *where) == n


async def test_a_campaign_invite_welcomes_with_its_product_link_and_a_coupon_code(wc, sim):
    from decimal import Decimal

    from gateway.models import Campaign, Coupon, CouponCode, Product

    gw, client, _, _, lin, _ = wc
    now = gw.clock.now()
    async with gw.db() as s:
        p = Product(sku="COAT", name="羊绒大衣", price=Decimal("1299.00"), url="https://shop.example/coat")
        cp = Coupon(name="满500减100", value=Decimal("100.00"), valid_from=now, valid_to=now + timedelta(days=30))
        s.add_all([p, cp])
        await s.flush()
        s.add(CouponCode(coupon_id=cp.id, code="WELCOME-001"))
        camp = Campaign(name="开业", kind="coupon", content={"text": "t", "product_id": p.id}, coupon_id=cp.id)
        s.add(camp)
        await s.flush()
        inv = await advisors.create_invite(s, lin, source="poster", campaign_id=camp.id)
        await s.commit()
        code = inv.code
    await scan(gw, client, sim, "wmGift", code)
    await wait_until(lambda: len(sim.welcomes["wmGift"]) == 1)
    w = sim.welcomes["wmGift"][0]
    assert "我是小林" in w["text"]["content"] and "WELCOME-001" in w["text"]["content"]
    assert w["attachments"][0]["link"]["url"] == "https://shop.example/coat"
    cid = await customer_of(gw, "wmGift")
    async with gw.db() as s:
        issued = (await s.exec(select(CouponCode.customer_id).where(CouponCode.code == "WELCOME-001"))).one()
        logged = (await s.exec(select(Interaction).where(Interaction.type == "coupon_issued"))).one()
    assert issued == cid and logged.customer_id == cid
