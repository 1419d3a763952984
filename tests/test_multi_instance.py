"""Two gateways on one PostgreSQL database: live messages reach a page connected to either one,
inbound dedupe holds across them, and they share one scheduler leader."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from gateway.app import create_app
from gateway.models import ChatMessage
from gateway.runtime import Gateway
from tests.conftest import WEBCHAT_SECRET, _truncate, make_config, make_world, wait_until


async def two_instances(pg_database, aiohttp_client, *, b_workers: bool):
    await _truncate(pg_database)
    a, b = Gateway(make_config(pg_database)), Gateway(make_config(pg_database))
    b.instance_id += "-b"  # one process hosts both here; instances are told apart by this id
    b._hub.origin = b.instance_id
    await a.start()
    await b.start(workers=b_workers)
    ca = await aiohttp_client(create_app(a, manage_lifecycle=False))
    cb = await aiohttp_client(create_app(b, manage_lifecycle=False))
    return a, b, ca, cb


def base(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_a_reply_sent_by_one_instance_reaches_a_page_on_the_other(pg_database, aiohttp_client):
    a, b, ca, cb = await two_instances(pg_database, aiohttp_client, b_workers=False)  # only A sends
    try:
        world = await make_world(a)
        alice = await BrandApp(ca.session, base(ca), "webchat", WEBCHAT_SECRET).login("u-multi", "Alice")
        assert (await alice.bind(world.invite))[0] == 200
        on_b = BrandApp(cb.session, base(cb), "webchat", WEBCHAT_SECRET)
        alice_b = await on_b.login("u-multi", "Alice")  # the same customer, her page served by B
        async with alice_b.ws() as ws:
            await asyncio.sleep(0.2)
            clerk = ClerkClient(ca.session, base(ca), world.clerk_token)
            await alice.say("在吗？")
            await clerk.wait_for(lambda m: m["text"].startswith("【Alice #1】在吗？"))
            await clerk.say("#1 在的，欢迎光临")
            got = []
            while not any(m.get("text") == "在的，欢迎光临" for m in got):
                got.append(await asyncio.wait_for(ws.receive_json(), 10))
            live = [m for m in got if m.get("text") == "在的，欢迎光临"]
            assert len(live) == 1 and live[0]["sender"] == {"name": "小林"}
        # A large message travels in parts and arrives whole, once.
        q = b.hub().subscribe("webchat", "u-big")
        payload = {"type": "message", "text": "长" * 6000 + "🎉", "id": 1}
        assert a.hub().publish("webchat", "u-big", payload) == 0  # nobody on A
        assert await asyncio.wait_for(q.get(), 10) == payload
        await asyncio.sleep(0.2)
        assert q.empty()
    finally:
        await b.stop()
        await a.stop()


async def test_the_same_inbound_message_posted_to_both_instances_is_stored_once(pg_database, aiohttp_client):
    a, b, ca, cb = await two_instances(pg_database, aiohttp_client, b_workers=True)
    try:
        world = await make_world(a)
        on_a = await BrandApp(ca.session, base(ca), "webchat", WEBCHAT_SECRET).login("u-twice", "Bob")
        on_b = await BrandApp(cb.session, base(cb), "webchat", WEBCHAT_SECRET).login("u-twice", "Bob")
        assert (await on_a.bind(world.invite))[0] == 200
        sent = await asyncio.gather(*(peer.say(f"第{i}条", client_msg_id=f"cm-{i}")
                                      for i in range(20) for peer in (on_a, on_b)))
        assert all(status in (200, 202) for status, _ in sent)

        async def stored() -> int:
            async with a.db() as s:
                return (await s.execute(select(func.count()).select_from(ChatMessage).where(
                    ChatMessage.direction == "in", ChatMessage.peer_id == "u-twice"))).scalar()

        async def stored_is(n):
            return await stored() == n

        await wait_until(lambda: stored_is(20))
        await asyncio.sleep(0.5)
        assert await stored() == 20
        # one scheduler leader between them
        await wait_until(lambda: a.leadership.is_leader or b.leadership.is_leader)
        assert not (a.leadership.is_leader and b.leadership.is_leader)
    finally:
        await b.stop()
        await a.stop()
