"""The Official Account end to end on its simulator: follow via an advisor's QR → bound and
welcomed, a chat both ways with a workbench clerk, the 48-hour / 5-reply window held with the
clerk told and the fallback used, replays, forged callbacks, pushes within the per-user cap, and
one customer across the Official Account and webchat by unionid."""

from __future__ import annotations

import pytest
from sqlalchemy import func
from sqlmodel import select

from adapters.webchat.simulator import BrandApp
from adapters.wechat_mp.simulator import OfficialAccountSimulator
from adapters.workbench.simulator import ClerkClient
from gateway import advisors
from gateway.app import create_app
from gateway.clock import FakeClock
from gateway.model import Message
from gateway.models import Binding, ChatMessage, Clerk, Customer, InboundClaim, Interaction, Outbox
from gateway.models import Identity as IdentityRow
from gateway.runtime import Gateway
from tests.conftest import WEBCHAT_SECRET, make_config, make_world, wait_until

APP_ID, SECRET, TOKEN = "wx1234567890abcdef", "mp-app-secret", "mptoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@pytest.fixture
def clock():
    from datetime import UTC, datetime

    return FakeClock(datetime.now(UTC).replace(microsecond=0))


def make_sim(clock, **kw):
    return OfficialAccountSimulator(app_id=APP_ID, app_secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY,
                                    now=lambda: clock.now().timestamp(), templates=["TPL_REPLY"], **kw)


@pytest.fixture
def sim(clock):
    return make_sim(clock)


async def build(sim, clock, aiohttp_server, aiohttp_client, db_url, policies=None, **acc):
    server = await aiohttp_server(sim.app())
    base = str(server.make_url("")).rstrip("/")
    account = {"name": "mp", "platform": "wechat_mp", "app_id": APP_ID, "app_secret": SECRET, "token": TOKEN,
               "encoding_aes_key": AES_KEY, "api_base": base, "qr_base": base, "timeout": 2, **acc}
    cfg = make_config(db_url, accounts=[{"name": "workbench", "platform": "workbench"}, account,
                                        {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET}],
                      outbox={"poll_interval": 0.05, "backoff_base": 0.05}, policies={"quiet_hours": None, **(policies or {})})  # pushes at any hour of the run
    gw = Gateway(cfg, clock=clock)
    client = await aiohttp_client(create_app(gw))
    gw.config.server.public_url = str(client.make_url("")).rstrip("/")
    world = await make_world(gw)
    clerk = ClerkClient(client.session, gw.config.server.public_url, world.clerk_token)
    brand = BrandApp(client.session, gw.config.server.public_url, "webchat", WEBCHAT_SECRET)
    return gw, client, world, clerk, brand


@pytest.fixture
async def mp(sim, clock, aiohttp_server, aiohttp_client, db_url):
    return await build(sim, clock, aiohttp_server, aiohttp_client, db_url)


async def post(client, qb):
    query, body = qb
    resp = await client.post("/callbacks/mp", params=query, data=body)
    assert resp.status == 200, await resp.text()
    assert await resp.text() == "success"


async def count(gw, model, *where):
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def customer_of(gw, openid):
    async with gw.db() as s:
        return (await s.exec(select(IdentityRow.customer_id).where(IdentityRow.platform == "wechat_mp",
                                                                   IdentityRow.external_id == openid))).first()


async def open_binding(gw, cid):
    async with gw.db() as s:
        return (await s.exec(select(Binding).where(Binding.customer_id == cid, Binding.valid_to.is_(None)))).first()


async def follow(gw, client, sim, openid, invite, **kw):
    qr = await client.get(f"/wechat_mp/mp/qr/{invite}", allow_redirects=False)
    assert qr.status == 302 and "showqrcode?ticket=" in qr.headers["Location"]
    await post(client, sim.subscribe(openid, scene=f"gw:{invite}", **kw))
    await wait_until(lambda: customer_of(gw, openid))
    cid = await customer_of(gw, openid)
    await wait_until(lambda: open_binding(gw, cid))
    await wait_until(lambda: any("我是小林" in t or "我是芳芳" in t for t in custom_texts(sim, openid)))  # welcomed
    await wait_until(lambda: count(gw, ChatMessage, ChatMessage.peer_id == openid, ChatMessage.direction == "out",
                                   ChatMessage.status.in_(("sent", "delivered"))))  # ... and recorded
    return cid


def custom_texts(sim, openid):
    return [m["payload"].get("content", "") for m in sim.custom_sent if m["openid"] == openid]


# -- callbacks ------------------------------------------------------------------------------------------


async def test_url_check_and_forged_or_stale_callbacks(mp, sim, clock):
    gw, client, *_ = mp
    query, echostr = sim.url_check()
    resp = await client.get("/callbacks/mp", params=query)
    assert resp.status == 200 and await resp.text() == echostr
    assert (await client.get("/callbacks/mp", params={**query, "signature": "0" * 40})).status == 401
    q, body = sim.text("oForged", "hi")
    assert (await client.post("/callbacks/mp", params={**q, "signature": "0" * 40}, data=body)).status == 401
    assert (await client.post("/callbacks/mp", params={**q, "msg_signature": "0" * 40}, data=body)).status == 401
    plain = sim.text("oPlain", "hi")[0]
    plain_body = b"<xml><ToUserName>gh</ToUserName><FromUserName>oPlain</FromUserName><CreateTime>1</CreateTime>" \
                 b"<MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>"
    assert (await client.post("/callbacks/mp", params={k: v for k, v in plain.items()
                                                       if k not in ("encrypt_type", "msg_signature")},
                              data=plain_body)).status == 400  # safe mode: plaintext refused
    stale_q, stale_body = sim.text("oStale", "hi")
    clock.advance(seconds=600)
    assert (await client.post("/callbacks/mp", params=stale_q, data=stale_body)).status == 401
    assert await count(gw, InboundClaim) == 0


async def test_follow_via_advisor_qr_binds_and_welcomes(mp, sim, backend):
    gw, client, world, clerk, _ = mp
    cid = await follow(gw, client, sim, "oAlice", world.invite, unionid="uAlice")
    b = await open_binding(gw, cid)
    assert b.clerk_id == world.clerk_id and b.source == "invite:counter"
    await wait_until(lambda: any("我是小林" in t for t in custom_texts(sim, "oAlice")))
    notice = await clerk.wait_for(lambda m: "新顾客绑定" in m["text"])
    assert "#1" in notice["text"]
    async def has_unionid():
        async with gw.db() as s:
            return (await s.exec(select(IdentityRow.unionid).where(IdentityRow.customer_id == cid))).first() == "uAlice"
    await wait_until(has_unionid)
    qr_again = await client.get(f"/wechat_mp/mp/qr/{world.invite}", allow_redirects=False)
    assert len(sim.qrcodes) == 1 and qr_again.status == 302  # one permanent code per invite
    async with gw.db() as s:
        bound = (await s.exec(select(Interaction).where(Interaction.type == "bound"))).one()
    assert bound.payload["channel"] == "wechat_mp" and "QR" in bound.payload["consent_how"]


async def test_chat_both_ways_and_a_replayed_callback_is_processed_once(mp, sim, backend):
    gw, client, world, clerk, _ = mp
    await follow(gw, client, sim, "oBob", world.invite)
    msg = sim.text("oBob", "有37码吗")
    await post(client, msg)
    await post(client, msg)  # WeChat retries after 5 s
    seen = await clerk.wait_for(lambda m: "有37码吗" in m["text"])
    assert seen["text"].startswith("【") and "#1】有37码吗" in seen["text"]
    await clerk.say("#1 有的，给您留一双")
    await wait_until(lambda: "有的，给您留一双" in custom_texts(sim, "oBob"))
    assert await count(gw, ChatMessage, ChatMessage.direction == "in", ChatMessage.text == "有37码吗") == 1
    voice = sim.add_media(b"#!AMR fake", "audio/amr")
    await post(client, sim.voice("oBob", voice, recognition="周六来"))
    heard = await clerk.wait_for(lambda m: "周六来" in m["text"])
    url = next(s["url"] for s in heard["segments"] if s["type"] == "voice")
    got = await client.session.get(url)
    assert got.status == 200 and await got.read() == b"#!AMR fake"


async def test_sixth_reply_in_the_window_is_held_and_the_clerk_told(mp, sim, clock):
    gw, client, world, clerk, _ = mp
    await follow(gw, client, sim, "oCara", world.invite)
    clock.advance(seconds=120)  # the follow's 1-minute window is over
    await post(client, sim.text("oCara", "在吗"))
    await clerk.wait_for(lambda m: "在吗" in m["text"])
    for i in range(6):
        await clerk.say(f"#1 回复{i}")
    told = await clerk.wait_for(lambda m: "消息未送达" in m["text"], timeout=8)
    assert "用完" in told["text"]
    await wait_until(lambda: len([t for t in custom_texts(sim, "oCara") if t.startswith("回复")]) == 5)
    sent = {t for t in custom_texts(sim, "oCara") if t.startswith("回复")}
    assert not [r for r in sim.refused if r["openid"] == "oCara"]  # held here, never sent blindly
    async with gw.db() as s:
        held = (await s.exec(select(Outbox).where(Outbox.status == "held"))).one()
    assert held.error_code == "window_quota"
    assert sent | {Message.from_dict(held.message).plain_text} == {f"回复{i}" for i in range(6)}


async def test_reply_after_48_hours_is_held_and_goes_as_a_template_notice(sim, clock, aiohttp_server, aiohttp_client,
                                                                        db_url):
    gw, client, world, clerk, _ = await build(sim, clock, aiohttp_server, aiohttp_client, db_url,
                                              fallback_template={"template_id": "TPL_REPLY",
                                                                 "url": "https://brand.example/chat"})
    await follow(gw, client, sim, "oDan", world.invite)
    await post(client, sim.text("oDan", "下周再来"))
    await clerk.wait_for(lambda m: "下周再来" in m["text"])
    clock.advance(hours=49)
    await clerk.say("#1 新款到了")
    told = await clerk.wait_for(lambda m: "消息未送达" in m["text"], timeout=8)
    assert "48" in told["text"] and "template" in told["text"]
    await wait_until(lambda: len(sim.template_sent) == 1)
    tpl = sim.template_sent[0]
    assert tpl["openid"] == "oDan" and tpl["template_id"] == "TPL_REPLY" and "新款到了" in str(tpl["data"])
    assert "新款到了" not in custom_texts(sim, "oDan")


async def test_reply_after_48_hours_goes_to_the_customers_webchat_when_they_have_one(mp, sim, clock):
    gw, client, world, clerk, brand = mp
    web = await brand.login("app-user-9", "Eva", unionid="uEva")
    await web.bind(world.invite)
    await follow(gw, client, sim, "oEva", world.invite, unionid="uEva")
    await wait_until(lambda: _customers(gw, 1))  # one person, one customer
    await post(client, sim.text("oEva", "我在公众号"))
    await clerk.wait_for(lambda m: "我在公众号" in m["text"])
    clock.advance(hours=49)
    await clerk.say("新款到了")  # the current customer
    got = await web.wait_for(lambda m: m["text"] == "新款到了", timeout=8)
    assert got["sender"] == {"name": "小林"}
    told = await clerk.wait_for(lambda m: "消息未送达" in m["text"])
    assert "webchat" in told["text"]


async def _customers(gw, n):
    return await count(gw, Customer, Customer.merged_into_id.is_(None)) == n


async def test_one_customer_across_the_official_account_and_webchat(mp, sim, backend):
    """Same unionid, either order: one customer, one advisor, one history."""
    gw, client, world, clerk, brand = mp
    # Official Account first; the webchat session brings the same unionid later.
    cid = await follow(gw, client, sim, "oFay", world.invite, unionid="uFay")
    await post(client, sim.text("oFay", "公众号留言"))
    await clerk.wait_for(lambda m: "公众号留言" in m["text"])
    async def unionid_known():
        async with gw.db() as s:
            return (await s.exec(select(IdentityRow.unionid).where(IdentityRow.external_id == "oFay"))).first()
    await wait_until(unionid_known)
    fay = await brand.login("app-fay", "Fay", unionid="uFay")
    await fay.say("小程序留言")
    await clerk.wait_for(lambda m: "小程序留言" in m["text"])
    async with gw.db() as s:
        idents = (await s.exec(select(IdentityRow).where(IdentityRow.customer_id == cid))).all()
        history = (await s.exec(select(ChatMessage.text).where(ChatMessage.customer_id == cid,
                                                               ChatMessage.direction == "in"))).all()
    assert {i.platform for i in idents} == {"wechat_mp", "webchat"}
    assert set(history) == {"公众号留言", "小程序留言"}
    assert await count(gw, Binding, Binding.customer_id == cid) == 1
    # Webchat first, bound to the second clerk; the Official Account follow (no scene) merges in.
    george = await brand.login("app-george", "George", unionid="uGeorge")
    async with gw.db() as s:
        invite2 = await advisors.create_invite(s, world.clerk2_id)
        await s.commit()
    await george.bind(invite2.code)
    await george.say("先在小程序")
    await post(client, sim.subscribe("oGeorge", unionid="uGeorge"))
    await wait_until(lambda: count(gw, Interaction, Interaction.type == "merged"))  # unionid fetched after the ack
    await post(client, sim.text("oGeorge", "后在公众号"))
    await clerk_sees(gw, world.clerk2_id, "后在公众号")
    async with gw.db() as s:
        rows = (await s.exec(select(IdentityRow).where(IdentityRow.unionid == "uGeorge"))).all()
        assert len({r.customer_id for r in rows}) == 1
        keep = rows[0].customer_id
        texts = (await s.exec(select(ChatMessage.text).where(ChatMessage.customer_id == keep,
                                                             ChatMessage.direction == "in"))).all()
        b = (await s.exec(select(Binding).where(Binding.customer_id == keep, Binding.valid_to.is_(None)))).one()
        merged = (await s.exec(select(Interaction).where(Interaction.type == "merged"))).all()
    assert set(texts) == {"先在小程序", "后在公众号"} and b.clerk_id == world.clerk2_id and len(merged) == 1


async def clerk_sees(gw, clerk_id, text):
    async def seen():
        async with gw.db() as s:
            return (await s.exec(select(ChatMessage).where(ChatMessage.clerk_id == clerk_id,
                                                           ChatMessage.direction == "out",
                                                           ChatMessage.text.contains(text)))).first()
    await wait_until(seen)


async def test_pushes_respect_the_monthly_cap_and_go_as_one_mass_send(mp, sim, backend):
    gw, client, world, *_ = mp
    a = await follow(gw, client, sim, "oP1", world.invite)
    b = await follow(gw, client, sim, "oP2", world.invite)
    async with gw.db() as s:
        clerk = await s.get(Clerk, world.clerk_id)
        for i in range(5):
            for cid in (a, b):
                t = await advisors.customer_target(s, await s.get(Customer, cid), clerk)
                await gw.outbox.enqueue(s, t, Message.of_text(f"会员日{i}"), idem_key=f"p{i}:{cid}", kind="push")
        await s.commit()
    gw.outbox.kick()
    async def four_sent():
        return await count(gw, Outbox, Outbox.kind == "push", Outbox.status == "sent") == 8
    await wait_until(four_sent, timeout=15)
    async with gw.db() as s:
        held = (await s.exec(select(Outbox).where(Outbox.kind == "push", Outbox.status == "held"))).all()
    assert {h.idem_key for h in held} == {f"p4:{a}", f"p4:{b}"} and {h.error_code for h in held} == {"platform_cap"}
    jobs = list(sim.mass_jobs.values())
    assert len(jobs) == 4 and all(j["outcomes"] == {"oP1": "received", "oP2": "received"} for j in jobs)
    assert all(j.get("clientmsgid") for j in jobs)


async def test_a_subscription_account_holds_targeted_pushes_and_caps_at_one_a_day(clock, aiohttp_server,
                                                                               aiohttp_client, db_url):
    sim = make_sim(clock, service_account=False)
    gw, client, world, *_ = await build(sim, clock, aiohttp_server, aiohttp_client, db_url, service_account=False)
    adapter = gw.adapters["mp"]
    assert adapter.capabilities().push_cap == ("day", 1)
    from gateway.adapter import Permanent
    from gateway.model import Identity, Target

    with pytest.raises(Permanent) as e:
        await adapter.send(Target(Identity("wechat_mp", "mp", "oX"), customer_id=1), Message.of_text("hi"),
                           idem_key="k", kind="push")
    assert e.value.code == "mass_not_allowed" and e.value.hold


async def test_a_reply_to_a_customer_who_unfollowed_is_held_and_the_clerk_told(mp, sim):
    gw, client, world, clerk, _ = mp
    await follow(gw, client, sim, "oGone", world.invite)
    await post(client, sim.text("oGone", "谢谢"))
    await clerk.wait_for(lambda m: "谢谢" in m["text"])
    await post(client, sim.unsubscribe("oGone"))
    await clerk.say("#1 不客气")
    told = await clerk.wait_for(lambda m: "消息未送达" in m["text"], timeout=8)
    assert "取消关注" in told["text"]
    async with gw.db() as s:
        held = (await s.exec(select(Outbox).where(Outbox.status == "held"))).one()
    assert held.error_code == "not_following" and "43004" in held.last_error


async def test_a_menu_tap_does_not_cut_short_the_48_hour_window(mp, sim, clock):
    gw, client, world, clerk, _ = mp
    await follow(gw, client, sim, "oMenu", world.invite)
    clock.advance(seconds=120)
    await post(client, sim.text("oMenu", "看看新品"))
    await clerk.wait_for(lambda m: "看看新品" in m["text"])
    await post(client, sim.click("oMenu", "NEW_ARRIVALS"))
    for i in range(4):
        await clerk.say(f"#1 款式{i}")
    await wait_until(lambda: len([t for t in custom_texts(sim, "oMenu") if t.startswith("款式")]) == 4)
    assert await count(gw, Outbox, Outbox.status == "held") == 0



async def test_ask_customer_a_follower_scanning_another_advisor_is_asked_and_switches_on_yes(
        sim, clock, aiohttp_server, aiohttp_client, db_url):
    gw, client, world, clerk, _ = await build(sim, clock, aiohttp_server, aiohttp_client, db_url,
                                              policies={"binding": "ask_customer"})
    cid = await follow(gw, client, sim, "oIvy", world.invite)
    async with gw.db() as s:
        other = (await advisors.create_invite(s, world.clerk2_id)).code
        await s.commit()
    await client.get(f"/wechat_mp/mp/qr/{other}", allow_redirects=False)
    await post(client, sim.scan("oIvy", f"gw:{other}"))
    await wait_until(lambda: any("芳芳" in t and "换" in t for t in custom_texts(sim, "oIvy")))
    assert (await open_binding(gw, cid)).clerk_id == world.clerk_id  # nothing changes until they say yes
    await post(client, sim.text("oIvy", "换"))
    await wait_until(lambda: any("我是芳芳" in t for t in custom_texts(sim, "oIvy")))
    async with gw.db() as s:
        rows = (await s.exec(select(Binding).where(Binding.customer_id == cid).order_by(Binding.id))).all()
    assert [(b.clerk_id, b.end_reason) for b in rows] == [(world.clerk_id, "customer_switched"), (world.clerk2_id, None)]
    assert rows[1].source.startswith("switch:")
    await post(client, sim.text("oIvy", "换"))  # no open question now: just a message for the advisor
    await wait_until(lambda: count(gw, ChatMessage, ChatMessage.clerk_id == world.clerk2_id,
                                   ChatMessage.direction == "out", ChatMessage.text.contains("】换")))
