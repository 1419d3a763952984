"""End to end on the built-in channels: a customer binds through an invite and chats with a clerk."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from gateway.models import Binding, ChatMessage, Interaction
from tests.conftest import WEBCHAT_SECRET


def sims(client, world):
    server = str(client.make_url("")).rstrip("/")
    return BrandApp(client.session, server, "webchat", WEBCHAT_SECRET), ClerkClient(client.session, server, world.clerk_token)


async def count(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def test_bind_welcome_and_chat_both_ways(client, gw, world, backend):
    brand, clerk = sims(client, world)
    alice = await brand.login("u-alice", "Alice 张")
    assert await alice.advisor() is None

    async with client.session.get(f"{alice.base}/invites/{world.invite}", headers=alice.headers) as resp:
        assert resp.status == 200 and (await resp.json()) == {"advisor": {"name": "小林"}}
    async with client.session.get(f"{alice.base}/invites/nope", headers=alice.headers) as resp:
        assert resp.status == 404
    status, body = await alice.bind(world.invite)
    assert status == 200, body
    assert body["advisor"] == {"name": "小林"} and body["new"] is True
    welcome = await alice.wait_for(lambda m: "小林" in m["text"])
    assert welcome["sender"] == {"name": "小林"}  # the clerk's personal name, not the brand's
    assert (await alice.advisor()) == {"name": "小林"}
    await clerk.wait_for(lambda m: "新顾客" in m["text"] and "#1" in m["text"])

    await alice.say("这款包有红色吗？")
    relayed = await clerk.wait_for(lambda m: m["text"].startswith("【Alice 张 #1】"))
    assert relayed["text"] == "【Alice 张 #1】这款包有红色吗？"

    await clerk.say("有的，明天到货")  # bare text: to the current customer
    reply = await alice.wait_for(lambda m: m["text"] == "有的，明天到货")
    assert reply["sender"] == {"name": "小林"}
    confirm = await clerk.wait_for(lambda m: m["text"].startswith("→"))
    assert "Alice 张 #1" in confirm["text"]

    await clerk.say("#1 给您留一个")
    await alice.wait_for(lambda m: m["text"] == "给您留一个")

    types = {t for (t,) in (await _interaction_types(gw))}
    assert {"invite_scan", "bound", "message_in", "message_out"} <= types
    assert await count(gw, Binding, Binding.valid_to.is_(None)) == 1


async def _interaction_types(gw):
    async with gw.db() as s:
        return (await s.execute(select(Interaction.type))).all()


async def test_same_inbound_three_times_is_one_message(client, gw, world, backend):
    brand, clerk = sims(client, world)
    bob = await brand.login("u-bob", "Bob")
    await bob.bind(world.invite)
    results = [await bob.say("在吗", client_msg_id="m-1") for _ in range(3)]
    assert [r[0] for r in results] == [202, 202, 202]
    assert [r[1]["duplicate"] for r in results] == [False, True, True]
    await clerk.wait_for(lambda m: m["text"].endswith("】在吗"))
    await asyncio.sleep(0.2)
    assert await count(gw, ChatMessage, ChatMessage.direction == "in", ChatMessage.side == "customer") == 1
    assert await count(gw, ChatMessage, ChatMessage.text.like("%】在吗")) == 1
    assert await count(gw, Interaction, Interaction.type == "message_in") == 1


async def test_websocket_pushes_clerk_reply(client, gw, world):
    brand, clerk = sims(client, world)
    cara = await brand.login("u-cara", "Cara")
    await cara.bind(world.invite)
    async with cara.ws() as ws:
        await cara.say("hello")
        await clerk.wait_for(lambda m: "】hello" in m["text"])
        await clerk.say("hi Cara")
        while True:
            msg = await asyncio.wait_for(ws.receive_json(), 5)
            if msg["text"] == "hi Cara":
                break
        assert msg["type"] == "message" and msg["direction"] == "out" and msg["sender"] == {"name": "小林"}
        assert isinstance(msg["id"], int)


async def test_unbound_customer_gets_auto_reply_and_queue(client, gw, world):
    from gateway.models import QueueEntry

    brand, _ = sims(client, world)
    dan = await brand.login("u-dan", "Dan")
    await dan.say("有人吗")
    await dan.say("还在吗")
    auto = await dan.wait_for(lambda m: "专属顾问" in m["text"])
    assert auto["sender"] is None
    await asyncio.sleep(0.2)
    assert await count(gw, QueueEntry, QueueEntry.resolved_at.is_(None)) == 1
    assert await count(gw, ChatMessage, ChatMessage.text.like("%专属顾问%")) == 1  # one auto-reply, not one each
    await dan.bind(world.invite)  # binding takes the customer out of the queue
    assert await count(gw, QueueEntry, QueueEntry.resolved_at.is_(None)) == 0


async def test_clerk_addresses_unknown_and_foreign_handles(client, gw, world):
    brand, clerk = sims(client, world)
    await clerk.say("#9 hello")
    await clerk.wait_for(lambda m: "#9" in m["text"] and "没有" in m["text"])
    await clerk.say("hello there")  # no current customer yet
    await clerk.wait_for(lambda m: "#编号" in m["text"])


async def test_binding_policy_keep_first(client, gw, world):
    from gateway import advisors

    brand, _ = sims(client, world)
    eve = await brand.login("u-eve", "Eve")
    assert (await eve.bind(world.invite))[0] == 200
    async with gw.db() as s:
        other = await advisors.create_invite(s, world.clerk2_id, source="qr")
        await s.commit()
    status, body = await eve.bind(other.code)
    assert status == 409 and body["error"]["code"] == "already_bound" and body["advisor"] == {"name": "小林"}
    status, body = await eve.bind(world.invite)  # the same advisor again: fine, nothing new
    assert status == 200 and body["new"] is False
    assert (await eve.bind("nosuchcode"))[0] == 404
    assert (await eve.bind(world.invite, consent=False))[0] == 422


async def test_history_cursor_never_skips_a_message_still_in_the_outbox(gw):
    from gateway.model import Identity as Ident
    from gateway.models import ChatMessage as M

    peer = dict(platform="webchat", account="webchat", peer_id="u-h", side="customer", segments=[{"type": "text", "text": "x"}])
    async with gw.db() as s:
        rows = [M(direction="in", status="received", **peer), M(direction="out", status="queued", **peer),
                M(direction="in", status="received", **peer)]
        s.add_all(rows)
        await s.commit()
    ident = Ident("webchat", "webchat", "u-h")
    page = await gw.history(ident, 0, 50)
    assert [i["id"] for i in page["items"]] == [rows[0].id, rows[2].id]
    assert page["next"] == rows[0].id  # not past the queued reply
    async with gw.db() as s:
        (await s.get(M, rows[1].id)).status = "sent"
        await s.commit()
    page = await gw.history(ident, page["next"], 50)
    assert [i["id"] for i in page["items"]] == [rows[1].id, rows[2].id] and page["next"] == rows[2].id


async def test_advisor_without_a_reachable_work_im_leaves_the_customer_answered(aiohttp_client, db_url):
    """Bound to a clerk no configured channel can reach: the customer is told and queued, not ignored."""
    from bots.relay import UNBOUND_REPLY
    from gateway.app import create_app
    from gateway.models import QueueEntry
    from gateway.runtime import Gateway
    from tests.conftest import make_config, make_world

    gw = Gateway(make_config(db_url))
    world = await make_world(gw)
    client = await aiohttp_client(create_app(gw))
    brand, _ = sims(client, world)
    c = await brand.login("u-lost", "Lost")
    await c.bind(world.invite)
    del gw.clerk_accounts["workbench"]  # as if the workbench account were removed from the config
    await c.say("有人吗")
    reply = await c.wait_for(lambda m: m["text"] == UNBOUND_REPLY)
    assert reply["sender"] is None  # the brand speaks: the advisor cannot
    assert await count(gw, QueueEntry, QueueEntry.reason == "advisor_unreachable", QueueEntry.resolved_at.is_(None)) == 1
