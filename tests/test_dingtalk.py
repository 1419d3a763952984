"""DingTalk end to end on the simulator: relay both ways, dedupe, forged signs, throttling storms,
org events, work notifications and stream mode."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from sqlalchemy import func
from sqlmodel import select

from adapters.dingtalk.simulator import DingTalkSimulator
from adapters.webchat.simulator import BrandApp
from gateway.app import create_app
from gateway.model import Identity, Message, Target
from gateway.models import ChatMessage, Clerk, InboundClaim, Outbox, QueueEntry
from gateway.runtime import Gateway
from gateway.tokens import create_token
from tests.conftest import WEBCHAT_SECRET, make_config, wait_until

STAFF = "manager7521"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"


@pytest.fixture
def sim():
    return DingTalkSimulator(app_key="dingappkey01", app_secret="ding-app-secret-0001", robot_code="dingrobot01",
                             agent_id="1001", corp_id="dingcorp0001", token="evt-token", aes_key=AES_KEY)


@pytest.fixture
async def dt(sim, aiohttp_server, aiohttp_client, db_url, request):
    """A gateway whose clerk-side account `dt` points at the simulator; the clerk is on DingTalk."""
    server = await aiohttp_server(sim.app())
    param = getattr(request, "param", "http")  # the mode, or a dict of account keys (and mode)
    extra = {"mode": param} if isinstance(param, str) else param
    account = {"name": "dt", "platform": "dingtalk", "mode": "http", "app_key": "dingappkey01",
               "app_secret": "ding-app-secret-0001", "robot_code": "dingrobot01", "agent_id": "1001",
               "api_base": str(server.make_url("")).rstrip("/"), "oapi_base": str(server.make_url("")).rstrip("/"),
               "corp_id": "dingcorp0001", "event_token": "evt-token", "event_aes_key": AES_KEY, "timeout": 2, **extra}
    cfg = make_config(db_url, accounts=[account, {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET}],
                      outbox={"poll_interval": 0.05, "backoff_base": 0.05})
    gw = Gateway(cfg)
    client = await aiohttp_client(create_app(gw))
    gw.config.server.public_url = str(client.make_url("")).rstrip("/")
    from gateway import advisors
    from gateway.models import ClerkIdentity, Store

    async with gw.db() as s:
        store = Store(name="静安店")
        s.add(store)
        await s.flush()
        clerk = Clerk(name="林小雨", display_name="小林", store_id=store.id)
        s.add(clerk)
        await s.flush()
        s.add(ClerkIdentity(clerk_id=clerk.id, platform="dingtalk", account="dt", external_id=STAFF))
        invite = await advisors.create_invite(s, clerk.id)
        await s.commit()
    brand = BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)
    return gw, client, brand, invite.code, clerk.id


async def post_callback(client, headers, body, **params):
    return await client.post("/callbacks/dt", data=body, headers=headers, params=params)


async def count(gw, model, *where):
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def test_customer_and_dingtalk_clerk_chat_both_ways(dt, sim, backend):
    gw, client, brand, invite, _ = dt
    alice = await brand.login("u-alice", "Alice")
    await alice.bind(invite)
    await alice.say("有37码吗")
    await wait_until(lambda: "【Alice #1】有37码吗" in [t for t in sim_texts(sim)])

    headers, body = sim.robot_callback(STAFF, "#1 有的，给您留一双")
    resp = await post_callback(client, headers, body)
    assert resp.status == 200
    reply = await alice.wait_for(lambda m: m["text"] == "有的，给您留一双")
    assert reply["sender"] == {"name": "小林"}
    await wait_until(lambda: any(t.startswith("→ 已发送给 Alice #1") for t in sim_texts(sim)))
    assert sim.tokens_issued == 1  # one cached token for every send


def sim_texts(sim, user=STAFF) -> list[str]:
    out = []
    for m in sim.robot_inbox.get(user, []):
        p = m["msgParam"]
        out.append(p.get("content") or p.get("text") or p.get("title") or "")
    return out


async def test_unregistered_dingtalk_user_is_told_and_nothing_relayed(dt, sim):
    gw, client, brand, invite, _ = dt
    headers, body = sim.robot_callback("stranger01", "#1 hello")
    assert (await post_callback(client, headers, body)).status == 200
    await wait_until(lambda: any("还不是本品牌的导购" in t for t in sim_texts(sim, "stranger01")))
    assert await count(gw, ChatMessage, ChatMessage.text == "hello") == 0


async def test_a_dingtalk_clerk_who_left_is_told(dt, sim):
    gw, client, brand, invite, clerk_id = dt
    async with gw.db() as s:
        (await s.get(Clerk, clerk_id)).status = "left"
        await s.commit()
    headers, body = sim.robot_callback(STAFF, "#1 hello")
    assert (await post_callback(client, headers, body)).status == 200
    await wait_until(lambda: any("已停用" in t for t in sim_texts(sim)))


async def test_commands_work_from_dingtalk(dt, sim):
    gw, client, brand, invite, _ = dt
    headers, body = sim.robot_callback(STAFF, "/help")
    assert (await post_callback(client, headers, body)).status == 200
    await wait_until(lambda: any("/customers" in t for t in sim_texts(sim)))


async def test_replayed_callback_is_delivered_once(dt, sim, backend):
    gw, client, brand, invite, _ = dt
    bob = await brand.login("u-bob", "Bob")
    await bob.bind(invite)
    await bob.say("在吗")
    await wait_until(lambda: any("在吗" in t for t in sim_texts(sim)))
    headers, body = sim.robot_callback(STAFF, "#1 在的")
    for _ in range(3):  # DingTalk retries the same callback
        assert (await post_callback(client, headers, body)).status == 200
    await bob.wait_for(lambda m: m["text"] == "在的")
    await asyncio.sleep(0.3)
    assert await count(gw, ChatMessage, ChatMessage.text == "在的") == 1


async def test_wrong_sign_or_stale_timestamp_is_401_and_stores_nothing(dt, sim):
    gw, client, brand, invite, _ = dt
    before = (await count(gw, InboundClaim), await count(gw, ChatMessage))
    headers, body = sim.robot_callback(STAFF, "hello", secret="not-the-app-secret")
    assert (await post_callback(client, headers, body)).status == 401
    stale = int((time.time() - 2 * 3600) * 1000)
    headers, body = sim.robot_callback(STAFF, "hello", timestamp_ms=stale)
    assert (await post_callback(client, headers, body)).status == 401
    headers, body = sim.robot_callback(STAFF, "hello")
    assert (await post_callback(client, {k: v for k, v in headers.items() if k != "sign"}, body)).status == 401
    assert (await count(gw, InboundClaim), await count(gw, ChatMessage)) == before


async def test_throttling_storm_is_ridden_out_with_nothing_lost(dt, sim, backend):
    gw, client, brand, invite, _ = dt
    c = await brand.login("u-storm", "Storm")
    await c.bind(invite)
    await wait_until(lambda: len(sim_texts(sim)) >= 1)  # the new-customer notice
    sim.fail_next(3, "http429", "/v1.0/robot")
    sim.fail_next(1, "html_throttle", "/v1.0/robot")  # its page says: wait 5 s
    for i in range(5):
        await c.say(f"msg {i}")
    await wait_until(lambda: sum(t.startswith("【Storm #1】msg") for t in sim_texts(sim)) == 5, timeout=20)
    texts = [t for t in sim_texts(sim) if t.startswith("【Storm #1】msg")]
    assert sorted(texts) == [f"【Storm #1】msg {i}" for i in range(5)]  # each exactly once

    async def settled():
        return await count(gw, Outbox, Outbox.status != "sent") == 0

    await wait_until(settled)
    assert await count(gw, Outbox, Outbox.attempts > 1) >= 1  # the storm really hit


async def test_errcode_90002_storm_on_work_notifications(dt, sim):
    gw, client, brand, invite, clerk_id = dt
    sim.fail_next(2, "errcode90002", "/topapi")
    sim.fail_next(1, "errcode90018", "/topapi")
    target = Target(Identity("dingtalk", "dt", STAFF), clerk_id=clerk_id)
    async with gw.db() as s:
        for i in range(3):
            await gw.outbox.enqueue(s, target, Message.of_text(f"简报 {i}"), idem_key=f"b-{i}", kind="brief")
        await s.commit()
    gw.outbox.kick()
    await wait_until(lambda: len(sim.work_notices.get(STAFF, [])) == 3, timeout=15)

    async def settled():
        return await count(gw, Outbox, Outbox.status != "sent") == 0

    await wait_until(settled)
    assert sorted(n["msg"]["markdown"]["text"] for n in sim.work_notices[STAFF]) == [f"简报 {i}" for i in range(3)]
    assert sim.calls["/topapi/message/corpconversation/asyncsend_v2"] >= 6  # three throttled, then three sent


async def test_permanent_error_keeps_the_platforms_message(dt, sim):
    gw, client, brand, invite, clerk_id = dt
    sim.known_users = {"someone-else"}
    async with gw.db() as s:
        await gw.outbox.enqueue(s, Target(Identity("dingtalk", "dt", STAFF), clerk_id=clerk_id),
                                Message.of_text("hi"), idem_key="perm-1", kind="notice")
        await s.commit()
    gw.outbox.kick()

    async def dead():
        async with gw.db() as s:
            row = (await s.execute(select(Outbox.status, Outbox.error_code, Outbox.last_error))).first()
        return row is not None and row[0] == "dead"

    await wait_until(dead)
    async with gw.db() as s:
        row = (await s.execute(select(Outbox.error_code, Outbox.last_error))).first()
    assert row[0] == "invalidStaffId" and STAFF in row[1]


async def test_org_event_marks_the_clerk_left_and_queues_customers(dt, sim, backend):
    gw, client, brand, invite, clerk_id = dt
    c = await brand.login("u-q", "Q")
    await c.bind(invite)
    async with gw.db() as s:  # the clerk also signs in to the workbench... until they leave
        _, token = await create_token(s, "clerk", clerk_id=clerk_id)
        await s.commit()
    assert await gw.principal(token) is not None
    params, body = sim.url_check_callback()
    resp = await post_callback(client, {"Content-Type": "application/json"}, body, **params)
    assert resp.status == 200 and sim.decrypt_reply(await resp.read()) == "success"

    event = {"EventType": "user_leave_org", "TimeStamp": str(int(time.time() * 1000)), "UserId": [STAFF], "CorpId": "dingcorp0001"}
    params, body = sim.event_callback(event)
    resp = await post_callback(client, {"Content-Type": "application/json"}, body, **params)
    assert resp.status == 200 and sim.decrypt_reply(await resp.read()) == "success"

    async def left():
        async with gw.db() as s:
            return (await s.get(Clerk, clerk_id)).status == "left"

    await wait_until(left)
    assert await count(gw, QueueEntry, QueueEntry.resolved_at.is_(None), QueueEntry.reason == "advisor_left") == 1
    assert await gw.principal(token) is None  # revoked with the leave, not 30 s later
    await c.say("还在吗")  # the customer is not lost: told an advisor is coming, nothing goes to the old clerk
    await c.wait_for(lambda m: "专属顾问" in m["text"] and m["sender"] is None)
    assert not any("还在吗" in t for t in sim_texts(sim))

    params, body = sim.event_callback(event)
    forged = {**params, "signature": "0" * 40}
    assert (await post_callback(client, {"Content-Type": "application/json"}, body, **forged)).status == 401


async def test_work_notifications_respect_the_silent_limits(dt, sim):
    gw, client, brand, invite, clerk_id = dt
    target = Target(Identity("dingtalk", "dt", STAFF), clerk_id=clerk_id)
    async with gw.db() as s:
        for i, text in enumerate(["新品到店，请转发给您的顾客", "新品到店，请转发给您的顾客", "另一条简报"]):
            await gw.outbox.enqueue(s, target, Message.of_text(text), idem_key=f"brief-{i}", kind="brief")
        await s.commit()
    gw.outbox.kick()

    async def settled():
        async with gw.db() as s:
            return (await s.execute(select(func.count()).select_from(Outbox).where(Outbox.status.in_(("pending", "sending"))))).scalar() == 0

    await wait_until(settled)
    async with gw.db() as s:
        rows = {r.idem_key: (r.status, r.error_code) for r in (await s.exec(select(Outbox))).all()}
    assert rows["brief-0"] == ("sent", None) and rows["brief-2"] == ("sent", None)
    assert rows["brief-1"] == ("held", "same_content_today")  # held by us, not silently dropped by DingTalk
    assert len(sim.work_notices[STAFF]) == 2 and sim.dropped_notices == []


async def test_clerk_picture_reaches_the_customer(dt, sim):
    gw, client, brand, invite, _ = dt
    c = await brand.login("u-pic", "P")
    await c.bind(invite)
    await c.say("看看")
    await wait_until(lambda: any("看看" in t for t in sim_texts(sim)))
    code = sim.add_file(b"\x89PNG fake photo", "image/png")
    headers, body = sim.robot_callback(STAFF, msgtype="richText", content={
        "richText": [{"text": "#1 实拍"}, {"type": "picture", "downloadCode": code}]})
    assert (await post_callback(client, headers, body)).status == 200
    got = await c.wait_for(lambda m: "实拍" in m["text"])
    image = [s for s in got["segments"] if s["type"] == "image"][0]
    path = "/" + image["url"].split("://", 1)[1].split("/", 1)[1]
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 302
    async with client.session.get(resp.headers["Location"]) as photo:  # DingTalk's short-lived URL
        assert await photo.read() == b"\x89PNG fake photo"


@pytest.mark.parametrize("dt", ["stream"], indirect=True)
async def test_stream_mode_relays_acks_and_reconnects(dt, sim):
    gw, client, brand, invite, _ = dt
    await wait_until(lambda: sim.stream_connections == 1)
    c = await brand.login("u-s", "S")
    await c.bind(invite)
    await c.say("stream?")
    await wait_until(lambda: any("stream?" in t for t in sim_texts(sim)))
    mid = await sim.push_stream(STAFF, "#1 stream works")
    await c.wait_for(lambda m: m["text"] == "stream works")
    await wait_until(lambda: mid in sim.stream_acks)
    assert sim.stream_acks[mid]["code"] == 200

    await sim.drop_stream()
    await wait_until(lambda: sim.stream_connections == 1, timeout=10)
    await sim.push_stream(STAFF, "#1 after reconnect")
    await c.wait_for(lambda m: m["text"] == "after reconnect")
    assert sim.stream_acks[mid]["headers"]["messageId"] == mid


# -- issue 16: replayed signs, stream org events, video and voice --------------------------------------


async def test_a_captured_sign_cannot_carry_another_message(dt, sim, backend):
    """The sign covers only the timestamp. Captured a minute after it was made (well inside the
    1 h window), it used to carry any body; now it carries only the msgId it first came with."""
    gw, client, brand, invite, _ = dt
    bob = await brand.login("u-bob", "Bob")
    await bob.bind(invite)
    await bob.say("在吗")
    await wait_until(lambda: any("在吗" in t for t in sim_texts(sim)))
    minute_ago = int((time.time() - 60) * 1000)
    headers, body = sim.robot_callback(STAFF, "#1 在的", timestamp_ms=minute_ago)
    assert (await post_callback(client, headers, body)).status == 200
    assert (await post_callback(client, headers, body)).status == 200  # DingTalk's retry of that message
    forged = {**json.loads(body), "msgId": "msg-forged", "text": {"content": "#1 请转账到 6222…"}}
    resp = await post_callback(client, headers, json.dumps(forged).encode())
    assert resp.status == 401 and "already used" in (await resp.json())["error"]["message"]
    await bob.wait_for(lambda m: m["text"] == "在的")
    await asyncio.sleep(0.3)
    assert await count(gw, ChatMessage, ChatMessage.text.contains("转账")) == 0
    assert await count(gw, InboundClaim, InboundClaim.dedupe_key == "msg:msg-forged") == 0


async def test_two_messages_signed_in_the_same_millisecond_both_pass(dt, sim):
    """DingTalk's docs do not say two callbacks never share a millisecond: a fresh sign may carry a
    second msgId (within sign_share_seconds)."""
    gw, client, brand, invite, _ = dt
    now = int(time.time() * 1000)
    h1, b1 = sim.robot_callback(STAFF, "/help", timestamp_ms=now)
    h2, b2 = sim.robot_callback(STAFF, "/customers", timestamp_ms=now)
    assert h1["sign"] == h2["sign"]
    assert (await post_callback(client, h1, b1)).status == 200
    assert (await post_callback(client, h2, b2)).status == 200
    await wait_until(lambda: len(sim_texts(sim)) >= 2)


@pytest.mark.parametrize("dt", [{"allowed_sources": ["203.0.113.0/24"]}], indirect=True)
async def test_allowed_sources_refuse_other_peers_and_ignore_forwarded_for(dt, sim):
    gw, client, *_ = dt
    headers, body = sim.robot_callback(STAFF, "/help")
    resp = await post_callback(client, {**headers, "X-Forwarded-For": "203.0.113.7"}, body)
    assert resp.status == 401  # the test client is 127.0.0.1; X-Forwarded-For from an untrusted peer counts for nothing
    assert await count(gw, InboundClaim) == 0
    gw.config.server.trusted_proxies = ["127.0.0.1/32"]  # the test client is now a trusted proxy
    assert (await post_callback(client, {**headers, "X-Forwarded-For": "198.51.100.1, 203.0.113.7"}, body)).status == 200
    assert (await post_callback(client, {**headers, "X-Forwarded-For": "203.0.113.7, 198.51.100.1"}, body)).status == 401


@pytest.mark.parametrize("dt", ["stream"], indirect=True)
async def test_stream_mode_user_leave_org_hands_the_clerk_over(dt, sim):
    """In stream frames the event type is a frame header and `data` holds only {timeStamp, optStaffId,
    userId}; the clerk used to stay active and the frame was acked 200 all the same."""
    gw, client, brand, invite, clerk_id = dt
    await wait_until(lambda: sim.stream_connections == 1)
    c = await brand.login("u-q", "Q")
    await c.bind(invite)
    mid = await sim.push_stream_event("user_leave_org", {"timeStamp": str(int(time.time() * 1000)),
                                                         "optStaffId": "admin01", "userId": [STAFF]})

    async def left():
        async with gw.db() as s:
            return (await s.get(Clerk, clerk_id)).status == "left"

    await wait_until(left)
    assert sim.stream_acks[mid]["code"] == 200
    assert await count(gw, QueueEntry, QueueEntry.resolved_at.is_(None), QueueEntry.reason == "advisor_left") == 1


@pytest.mark.parametrize("dt", ["stream"], indirect=True)
async def test_stream_events_the_gateway_cannot_use_are_not_acked_as_handled(dt, sim, caplog):
    gw, *_ = dt
    caplog.set_level(logging.INFO, "gateway.dingtalk.stream")
    await wait_until(lambda: sim.stream_connections == 1)
    other = await sim.push_stream_event("user_add_org", {"timeStamp": "1", "userId": ["u9"]})
    untyped = await sim._send(sim._pick("EVENT", "*"), "EVENT", "*", {"userId": [STAFF]})  # no eventType header
    await wait_until(lambda: other in sim.stream_acks and untyped in sim.stream_acks)
    assert sim.stream_acks[other]["code"] == 404  # "not implemented", as the SDK's default handler says
    assert sim.stream_acks[untyped]["code"] == 400
    assert "user_add_org" in caplog.text and "without an eventType" in caplog.text
    assert await count(gw, InboundClaim) == 0


async def test_clerk_video_and_untranscribed_voice_reach_the_customer(dt, sim):
    gw, client, brand, invite, _ = dt
    c = await brand.login("u-v", "V")
    await c.bind(invite)
    await c.say("有视频吗")
    await wait_until(lambda: any("有视频吗" in t for t in sim_texts(sim)))
    video = sim.add_file(b"\x00\x00\x00 ftypmp4 fake", "video/mp4")
    headers, body = sim.robot_callback(STAFF, msgtype="video", content={
        "duration": "9", "downloadCode": video, "videoType": "mp4"})
    assert (await post_callback(client, headers, body)).status == 200
    got = await c.wait_for(lambda m: any(s["type"] == "file" for s in m["segments"]))
    link = [s for s in got["segments"] if s["type"] == "file"][0]
    assert link["name"] == "视频.mp4"
    resp = await client.get("/" + link["url"].split("://", 1)[1].split("/", 1)[1], allow_redirects=False)
    assert resp.status == 302
    async with client.session.get(resp.headers["Location"]) as f:
        assert await f.read() == b"\x00\x00\x00 ftypmp4 fake"
    voice = sim.add_file(b"#!AMR fake", "audio/amr")
    headers, body = sim.robot_callback(STAFF, msgtype="audio", content={"duration": "4000", "downloadCode": voice})
    assert (await post_callback(client, headers, body)).status == 200
    await c.wait_for(lambda m: any(s["type"] == "voice" for s in m["segments"]))
