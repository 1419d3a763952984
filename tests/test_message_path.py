"""The set-wise message path: one batch applies many events with a handful of statements, and the
edges of batching change nothing a person would see — a bind and a message of one customer in one
batch, two customers of one clerk in one batch, a poison event among good ones. Also: bare text
is never guessed (the clerk is asked), quoted replies, the per-customer flood gate, and the caches
that are dropped when an admin changes what they hold."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from gateway.model import Event, Identity, Message
from gateway.models import Binding, ChatMessage, ClerkFocus, InboundClaim, Outbox
from gateway.runtime import Gateway
from tests.conftest import WEBCHAT_SECRET, make_config, make_world, wait_until


def customer_event(user: str, kind: str = "message", text: str = "hi", **payload) -> Event:
    now = datetime.now(UTC)
    if kind == "bind":
        return Event("bind", "customer", Identity("webchat", "webchat", user), f"bind:{user}:{text}", now,
                     payload={"consent": True, **payload}, profile={"name": user})
    return Event("message", "customer", Identity("webchat", "webchat", user), f"msg:{user}:{text}", now,
                 message=Message.of_text(text), payload=payload, profile={"name": user})


def clerk_event(clerk_id: int, text: str, **payload) -> Event:
    return Event("message", "clerk", Identity("workbench", "workbench", str(clerk_id)), f"msg:{clerk_id}:{text}",
                 datetime.now(UTC), message=Message.of_text(text), payload=payload)


async def claimed(gw, *events: Event) -> list[tuple[int, str, list[Event]]]:
    out = []
    for e in events:
        adapter = gw.adapters[e.sender.account]
        out.append((await gw.ingress.claim(adapter, e.dedupe_key, [e]), e.dedupe_key, [e]))
    return out


async def rows(gw, model, *where):
    async with gw.db() as s:
        return (await s.execute(select(model).where(*where).order_by(model.id))).scalars().all()


async def count(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def test_a_bind_and_a_message_of_one_customer_in_one_batch(gw, world, backend):
    """The bind (which needs the session) comes first: the message after it sees the new binding."""
    batch = await claimed(gw, customer_event("u-new", "bind", invite=world.invite), customer_event("u-new", text="在吗"))
    results = await gw.ingress.process_batch(batch)
    assert results[batch[0][0]][0]["status"] == "bound"
    relays = await rows(gw, Outbox, Outbox.kind == "relay")
    assert [r.message["segments"][0]["text"] for r in relays] == ["【u-new #1】在吗"]
    assert await count(gw, Outbox, Outbox.kind == "welcome") == 1
    assert await count(gw, Outbox, Outbox.kind == "reply", Outbox.account == "webchat") == 0  # no "unassigned" reply
    assert await count(gw, Binding, Binding.valid_to.is_(None)) == 1


async def test_two_customers_of_one_clerk_in_one_batch_then_bare_text_is_not_guessed(gw, world, backend):
    setup = await claimed(gw, customer_event("u-a", "bind", invite=world.invite),
                          customer_event("u-b", "bind", invite=world.invite))
    await gw.ingress.process_batch(setup)
    batch = await claimed(gw, customer_event("u-a", text="红色有吗"), customer_event("u-b", text="几点开门"))
    await gw.ingress.process_batch(batch)
    relays = [r.message["segments"][0]["text"] for r in await rows(gw, Outbox, Outbox.kind == "relay")]
    assert relays == ["【u-a #1】红色有吗", "【u-b #2】几点开门"]
    focus = (await rows(gw, ClerkFocus, ClerkFocus.clerk_id == world.clerk_id))[-1]
    assert (focus.kind, focus.previous_customer_id) == ("shown", (await _customer(gw, "u-a")))
    await sent_out(gw)  # both relays reach the clerk's page
    # Bare text a moment after the switch from 甲 to 乙 might have been meant for either: ask, hold it.
    await gw.ingress.process_batch(await claimed(gw, clerk_event(world.clerk_id, "有的")))
    asked = (await rows(gw, ChatMessage, ChatMessage.side == "clerk", ChatMessage.direction == "out"))[-1]
    assert asked.text.startswith("发给谁？") and "#1 u-a" in asked.text and "#2 u-b" in asked.text
    assert await count(gw, Outbox, Outbox.kind == "reply", Outbox.account == "webchat",
                       Outbox.idem_key.like("%:relay")) == 0
    # "#1" answers: the held text goes to customer 1, and nothing to customer 2.
    await gw.ingress.process_batch(await claimed(gw, clerk_event(world.clerk_id, "#1")))
    sent = await rows(gw, ChatMessage, ChatMessage.side == "customer", ChatMessage.direction == "out",
                      ChatMessage.text == "有的")
    assert [m.peer_id for m in sent] == ["u-a"]
    # The clerk chose 甲: bare text now goes to 甲 without a question.
    await gw.ingress.process_batch(await claimed(gw, clerk_event(world.clerk_id, "马上到")))
    sent = await rows(gw, ChatMessage, ChatMessage.direction == "out", ChatMessage.text == "马上到")
    assert [m.peer_id for m in sent] == ["u-a"]


async def sent_out(gw) -> None:
    """What the outbox holds goes out now (the tests here run no outbox worker)."""
    while rows_ := await gw.outbox.claim(100):
        for r in rows_:
            await gw.outbox.deliver(r)
    await gw.outbox._sent.close()


async def _customer(gw, user: str) -> int:
    from gateway.models import Identity as IdentityRow

    return (await rows(gw, IdentityRow, IdentityRow.external_id == user))[0].customer_id


async def test_a_poison_event_does_not_sink_its_batch(gw, world, backend):
    """An event that breaks its handler fails alone: the batch falls back to one claim at a time."""
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", "bind", invite=world.invite)))
    poison = customer_event("u-p", "bind", invite={"not": "a code"})  # a handler error mid-batch
    batch = await claimed(gw, customer_event("u-a", text="one"), poison, customer_event("u-a", text="two"))
    await gw.ingress.start()
    try:
        for item in batch:
            gw.ingress._enqueue(*item)
        async def both_relayed():
            return await count(gw, Outbox, Outbox.kind == "relay") == 2

        await wait_until(both_relayed, timeout=10)
        relays = [r.message["segments"][0]["text"] for r in await rows(gw, Outbox, Outbox.kind == "relay")]
        assert relays == ["【u-a #1】one", "【u-a #1】two"]
        bad = (await rows(gw, InboundClaim, InboundClaim.id == batch[1][0]))[0]
        assert bad.status == "pending" and bad.attempts >= 1 and bad.last_error  # retried later, alone
    finally:
        await gw.ingress.stop(1)


async def test_a_batch_of_relays_costs_statements_per_batch_not_per_message(gw, world, backend):
    users = [f"u-{i}" for i in range(20)]
    await gw.ingress.process_batch(await claimed(gw, *(customer_event(u, "bind", invite=world.invite) for u in users)))
    before = gw.ingress.statements
    await gw.ingress.process_batch(await claimed(gw, *(customer_event(u, text="again") for u in users)))
    assert await count(gw, Outbox, Outbox.kind == "relay") == 20
    assert gw.ingress.statements - before <= 8  # staged writes: one statement per table, whatever the size


async def test_opening_hours_changed_by_an_admin_are_seen_at_once(client, gw, world, backend):
    """Stores' hours are cached; the admin API's change drops the cache when it commits."""
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-h", "bind", invite=world.invite)))
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-h", text="早")))
    assert world.store_id in gw.caches._hours  # cached: no hours, always open
    assert await count(gw, Outbox, Outbox.idem_key.like("offhours:%")) == 0
    local = datetime.now(gw.tz)
    closed = f"{(local.hour + 2) % 24:02d}:00-{(local.hour + 2) % 24:02d}:30"  # open later, not now
    resp = await client.patch(f"/api/v1/stores/{world.store_id}", json={"opening_hours": {"daily": closed}},
                              headers={"Authorization": f"Bearer {world.admin_token}"})
    assert resp.status == 200, await resp.text()
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-h", text="在吗")))
    assert await count(gw, Outbox, Outbox.idem_key.like("offhours:%")) == 1  # the closed store answers


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_another_instance_drops_its_cache_when_a_store_changes(backend, db_url):
    """On PostgreSQL the change's NOTIFY reaches every instance: its next relay sees new hours."""
    a, b = Gateway(make_config(db_url)), Gateway(make_config(db_url))
    world = await make_world(a)
    await a.start()
    await b.start()
    try:
        async with b.db() as s:
            assert (await b.caches.hours(s, [world.store_id]))[world.store_id] is None  # always open
        async with a.db() as s:
            from gateway.caches import HOURS
            from gateway.models import Store

            store = await s.get(Store, world.store_id)
            store.opening_hours = {"daily": "closed"}
            await a.caches.changed(s, HOURS)
            await s.commit()
        await wait_until(lambda: world.store_id not in b.caches._hours, timeout=5)
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_instances_share_one_accounts_pace(backend, db_url):
    """The platform's rate holds for all processes together: two paces, one slot sequence."""
    from gateway.db import make_engine
    from gateway.quota import SharedPace

    engines = [make_engine(db_url), make_engine(db_url)]
    try:
        paces = [SharedPace(e, "dt", rate=20, burst=1) for e in engines]
        stamps: list[float] = []

        async def send(p):
            for _ in range(10):
                await p.acquire()
                stamps.append(asyncio.get_running_loop().time())

        await asyncio.gather(*(send(p) for p in paces))
        stamps.sort()
        # 20 calls at 20/s: any 1-second window holds at most 20 (+1 for the edge), never 40.
        assert all(sum(1 for t in stamps if s <= t < s + 1.0) <= 21 for s in stamps)
        assert stamps[-1] - stamps[0] >= 0.9  # 20 slots 50 ms apart
    finally:
        for e in engines:
            await e.dispose()


async def test_sends_of_a_web_session_reach_the_clerk_through_the_workers(client, gw, world):
    """End to end through HTTP: the staged path relays and the clerk's reply comes back."""
    server = str(client.make_url("")).rstrip("/")
    brand, clerk = BrandApp(client.session, server, "webchat", WEBCHAT_SECRET), ClerkClient(
        client.session, server, world.clerk_token)
    c = await brand.login("u-e2e", "甲")
    await c.bind(world.invite)
    for i in range(5):
        await c.say(f"n{i}")
    got: list[str] = []

    async def all_relayed():
        got.extend(m["text"] for m in await clerk.fetch() if m["direction"] == "out")
        return {f"【甲 #1】n{i}" for i in range(5)} <= set(got)

    await wait_until(all_relayed)
    await clerk.say("好的")
    await c.wait_for(lambda m: m["text"] == "好的")


async def test_a_shared_pace_under_a_busy_loop_still_hands_out_calls(pg_database):
    """A call woken a little after its slot still goes (the pace's margin under the cap absorbs it).
    Giving the slot up after a quarter interval made a high or lifted cap (WeCom's 150/s; 100,000/s
    in bench/inbound.py --compare-cap) spin on the database: nearly every wake-up was "late", so
    the clerks' confirmations were never sent."""
    import time

    from gateway.db import make_engine
    from gateway.outbox import LATE_OK
    from gateway.quota import SharedPace

    engine = make_engine(pg_database)
    try:
        pace = SharedPace(engine, "lifted", rate=100_000, burst=1, late_ok=LATE_OK)
        for _ in range(50):
            await asyncio.wait_for(pace.acquire(), 2)
            time.sleep(0.002)  # noqa: ASYNC251 - the event loop is busy elsewhere (the point)
        assert pace.missed < 5
        paced = SharedPace(engine, "wecom", rate=142.5, burst=1, late_ok=LATE_OK)
        started = asyncio.get_running_loop().time()
        for _ in range(30):
            await asyncio.wait_for(paced.acquire(), 2)
            time.sleep(0.004)  # noqa: ASYNC251 - later than a quarter interval (1.75 ms) after most slots
        assert paced.missed < 5 and asyncio.get_running_loop().time() - started < 1.0
    finally:
        await engine.dispose()
