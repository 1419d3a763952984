"""Live fan-out: a page that opens its socket just after a message went out still gets it."""

from __future__ import annotations

import asyncio

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from gateway import hub as hub_module
from gateway.hub import Hub
from tests.conftest import WEBCHAT_SECRET


async def test_a_new_subscriber_gets_what_was_published_in_the_replay_window(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: now[0])
    hub = Hub(queue_size=4, replay_seconds=10, replay_max=5)
    assert hub.publish("wb", "7", {"id": 1}) == 0  # nobody listening
    now[0] += 6
    hub.publish("wb", "7", {"id": 2})
    hub.publish("wb", "8", {"id": 3})
    q = hub.subscribe("wb", "7")
    assert [q.get_nowait()["id"] for _ in range(q.qsize())] == [1, 2]
    now[0] += 5  # id 1 is 11 s old now
    q = hub.subscribe("wb", "7")
    assert [q.get_nowait()["id"] for _ in range(q.qsize())] == [2]
    for i in range(4, 10):  # 6 in total now, over replay_max: the oldest goes first
        hub.publish("wb", "9", {"id": i})
    assert hub.subscribe("wb", "7").qsize() == 0 and hub.subscribe("wb", "8").qsize() == 1
    q = hub.subscribe("wb", "9")
    assert [q.get_nowait()["id"] for _ in range(q.qsize())] == [6, 7, 8, 9]  # at most queue_size per key
    now[0] += 11
    assert hub.subscribe("wb", "9").qsize() == 0


async def test_a_page_opened_between_a_send_and_its_record_still_gets_the_message(client, gw, world, monkeypatch):
    """The outbox publishes to the hub, then records the send (batched); the history shows a
    message once recorded. A workbench opened in between used to see it in neither (a browser
    test caught it once in CI)."""
    server = str(client.make_url("")).rstrip("/")
    alice = await BrandApp(client.session, server, "webchat", WEBCHAT_SECRET).login("u-alice", "Alice")
    clerk = ClerkClient(client.session, server, world.clerk_token)
    assert (await alice.bind(world.invite))[0] == 200
    await alice.wait_for(lambda m: "小林" in m["text"])
    await clerk.wait_for(lambda m: "新顾客" in m["text"])

    held, release = asyncio.Event(), asyncio.Event()
    write = gw.outbox._write_sent

    async def record_late(batch):
        held.set()
        await release.wait()
        return await write(batch)

    monkeypatch.setattr(gw.outbox, "_write_sent", record_late)
    await alice.say("在吗？")
    await asyncio.wait_for(held.wait(), 5)  # sent to the clerk's (closed) page; not recorded yet
    try:
        async with clerk.ws() as ws:
            assert not [m for m in await clerk.fetch() if "在吗" in m["text"]]  # the catch-up misses it
            while "在吗" not in (got := await ws.receive_json(timeout=2)).get("text", ""):
                pass
            assert got["text"] == "【Alice #1】在吗？"
    finally:
        release.set()
    await clerk.wait_for(lambda m: "在吗" in m["text"])  # and the history has it once recorded
