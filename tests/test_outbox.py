"""The outbox: exactly once across a dead worker, no double claims, backoff, dead letters, opt-outs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlmodel import select

from gateway.adapter import Permanent, Receipt, Retryable
from gateway.clock import FakeClock
from gateway.model import Identity, Message, Target
from gateway.models import ChatMessage, Customer, Outbox
from gateway.models import Identity as IdentityRow
from gateway.outbox import OutboxWorker


@pytest.fixture
def clock():
    from datetime import UTC, datetime

    return FakeClock(datetime.now(UTC))


class Recorder:
    """Stands in for a platform: records every send; can fail on demand."""

    def __init__(self, fail: list[Exception] | None = None):
        self.sent: list[str] = []
        self.fail = list(fail or [])

    async def __call__(self, target, message, *, idem_key, kind="reply"):
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append(idem_key)
        return Receipt(platform_msg_id=f"p-{len(self.sent)}")


async def customer(gw, user="u-1") -> Target:
    async with gw.db() as s:
        c = Customer(name="测试")
        s.add(c)
        await s.flush()
        s.add(IdentityRow(customer_id=c.id, platform="webchat", account="webchat", external_id=user))
        await s.commit()
        return Target(Identity("webchat", "webchat", user), customer_id=c.id)


async def enqueue(gw, target, n=1, kind="reply", prefix="k") -> list[int]:
    ids = []
    async with gw.db() as s:
        for i in range(n):
            ids.append(await gw.outbox.enqueue(s, target, Message.of_text(f"hello {i}"), idem_key=f"{prefix}-{i}", kind=kind))
        await s.commit()
    return ids


async def rows(gw):
    async with gw.db() as s:
        return (await s.exec(select(Outbox).order_by(Outbox.id))).all()


async def test_worker_killed_between_claim_and_send_delivers_once(gw, clock, backend):
    rec = Recorder()
    gw.adapters["webchat"].send = rec
    target = await customer(gw)
    await enqueue(gw, target)

    dead = OutboxWorker(gw)
    claimed = await dead.claim(10)
    assert len(claimed) == 1  # …and then the process dies: no send, no outcome recorded

    survivor = OutboxWorker(gw)
    assert await survivor.claim(10) == []  # the lease still holds
    clock.advance(seconds=gw.config.outbox.lease_seconds + 1)
    again = await survivor.claim(10)
    assert [r.id for r in again] == [claimed[0].id]
    assert await survivor.deliver(again[0]) == "sent"

    # The dead worker's late outcome (if it ever came back) cannot overwrite the survivor's.
    assert await dead._finish(claimed[0], "dead", error="late") == "dead"
    (row,) = await rows(gw)
    assert row.status == "sent" and row.attempts == 2 and row.platform_msg_id == "p-1"
    assert rec.sent == ["k-0"]
    clock.advance(seconds=3600)
    assert await survivor.claim(10) == []


async def test_concurrent_workers_never_claim_the_same_row(gw, backend):
    target = await customer(gw)
    await enqueue(gw, target, n=120)
    workers = [OutboxWorker(gw) for _ in range(4)]
    seen: list[int] = []
    while True:
        batches = await asyncio.gather(*(w.claim(7) for w in workers))
        got = [r.id for b in batches for r in b]
        if not got:
            break
        seen.extend(got)
    assert len(seen) == 120 and len(set(seen)) == 120


async def test_retryable_backs_off_then_succeeds(gw, clock, backend):
    rec = Recorder(fail=[Retryable("HTTP 503"), Retryable("throttled", retry_after=120)])
    gw.adapters["webchat"].send = rec
    await enqueue(gw, await customer(gw))
    w = OutboxWorker(gw)

    (r,) = await w.claim(1)
    assert await w.deliver(r) == "pending"
    (row,) = await rows(gw)
    first_delay = (row.next_attempt_at - clock.now()).total_seconds()
    assert 0 < first_delay <= gw.config.outbox.backoff_base and row.last_error == "HTTP 503"
    assert await w.claim(1) == []  # not due yet

    clock.advance(seconds=first_delay + 0.01)
    (r,) = await w.claim(1)
    assert await w.deliver(r) == "pending"
    (row,) = await rows(gw)
    assert (row.next_attempt_at - clock.now()).total_seconds() >= 120  # the platform's retry-after wins

    clock.advance(seconds=121)
    (r,) = await w.claim(1)
    assert await w.deliver(r) == "sent"
    assert rec.sent == ["k-0"]


async def test_gives_up_after_max_attempts_and_retry_api(gw, clock, client, world):
    gw.outbox.cfg.max_attempts = 2
    rec = Recorder(fail=[Retryable("down")] * 2)
    gw.adapters["webchat"].send = rec
    await gw.outbox.stop(0)  # drive the worker by hand
    await enqueue(gw, await customer(gw))
    w = OutboxWorker(gw)
    for _ in range(2):
        (r,) = await w.claim(1)
        await w.deliver(r)
        clock.advance(seconds=600)
    (row,) = await rows(gw)
    assert row.status == "dead" and "gave up after 2 attempts" in row.last_error

    h = {"Authorization": f"Bearer {world.admin_token}"}
    listed = await (await client.get("/api/v1/outbox?status=dead", headers=h)).json()
    assert [i["id"] for i in listed["items"]] == [row.id]
    resp = await client.post(f"/api/v1/outbox/{row.id}/retry", headers=h)
    assert resp.status == 200
    (r,) = await w.claim(1)
    assert await w.deliver(r) == "sent"
    assert (await client.post(f"/api/v1/outbox/{row.id}/retry", headers=h)).status == 409


async def test_permanent_error_is_a_dead_letter_with_the_platform_code(gw):
    gw.adapters["webchat"].send = Recorder(fail=[Permanent("user blocked us", code="43004")])
    await enqueue(gw, await customer(gw))
    w = OutboxWorker(gw)
    (r,) = await w.claim(1)
    assert await w.deliver(r) == "dead"
    (row,) = await rows(gw)
    assert (row.status, row.error_code, row.last_error) == ("dead", "43004", "user blocked us")
    async with gw.db() as s:
        msg = await s.get(ChatMessage, row.message_id)
    assert msg.status == "failed"


async def test_pushes_to_an_opted_out_customer_are_held(gw, backend):
    rec = Recorder()
    gw.adapters["webchat"].send = rec
    target = await customer(gw)
    async with gw.db() as s:
        c = await s.get(Customer, target.customer_id)
        c.opted_out_at = gw.clock.now()
        await s.commit()
    await enqueue(gw, target, kind="push", prefix="push")
    await enqueue(gw, target, kind="reply", prefix="reply")  # conversation still works
    w = OutboxWorker(gw)
    for r in await w.claim(10):
        await w.deliver(r)
    assert rec.sent == ["reply-0"]
    push = [r for r in await rows(gw) if r.kind == "push"][0]
    assert (push.status, push.error_code) == ("held", "opted_out")


async def test_duplicate_idempotency_key_is_ignored(gw):
    target = await customer(gw)
    assert (await enqueue(gw, target))[0] is not None
    assert await enqueue(gw, target) == [None]
    assert len(await rows(gw)) == 1


async def test_rate_limit_spaces_sends(gw):
    from gateway.ratelimit import TokenBucket

    t = [0.0]
    bucket = TokenBucket(rate=10, burst=2, monotonic=lambda: t[0])
    slept = []

    async def fake_sleep(s):
        slept.append(s)
        t[0] += s

    import gateway.ratelimit as rl

    orig = rl.asyncio.sleep
    rl.asyncio.sleep = fake_sleep
    try:
        for _ in range(5):
            await bucket.acquire()
    finally:
        rl.asyncio.sleep = orig
    assert slept == [pytest.approx(0.1)] * 3  # two from the burst, then 10 a second
    assert bucket.waited == pytest.approx(0.3)


async def test_stop_drains_in_flight_sends(gw):
    started, release = asyncio.Event(), asyncio.Event()
    sent = []

    async def slow(target, message, *, idem_key, kind="reply"):
        started.set()
        await release.wait()
        sent.append(idem_key)
        return Receipt()

    gw.adapters["webchat"].send = slow
    await enqueue(gw, await customer(gw))
    await gw.start()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(gw.outbox.stop(grace=5))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the send in flight
    release.set()
    await stopping
    (row,) = await rows(gw)
    assert sent == ["k-0"] and row.status == "sent"
    await gw.ingress.stop(0)
    gw.started = False
    await gw.engine.dispose()


async def test_lease_expiry_uses_the_injected_clock(gw, clock):
    await enqueue(gw, await customer(gw))
    w = OutboxWorker(gw)
    (r,) = await w.claim(1)
    (row,) = await rows(gw)
    assert row.lease_until - clock.now() == timedelta(seconds=gw.config.outbox.lease_seconds)


async def test_a_welcome_and_a_reply_are_claimed_before_an_earlier_campaign_backlog(gw, clock):
    target = await customer(gw)
    await enqueue(gw, target, n=5, kind="push", prefix="bulk")
    clock.advance(seconds=1)
    await enqueue(gw, target, kind="reply", prefix="chat")
    await enqueue(gw, target, kind="welcome", prefix="hello")
    first = await gw.outbox.claim(2)
    assert {r.idem_key for r in first} == {"hello-0", "chat-0"}  # RETURNING order is not the claim order
    assert [r.kind for r in await gw.outbox.claim(10)] == ["push"] * 5


async def test_deferred_sends_wait_without_spending_attempts(gw, clock, monkeypatch):
    from gateway.adapter import Deferred

    target = await customer(gw)
    [oid] = await enqueue(gw, target)
    adapter = gw.adapters["webchat"]
    monkeypatch.setattr(adapter, "send", Recorder([Deferred("cap", retry_after=30)] * (gw.config.outbox.max_attempts + 3)))
    for _ in range(gw.config.outbox.max_attempts + 3):
        [row] = await gw.outbox.claim(1)
        assert await gw.outbox.deliver(row) == "pending"
        clock.advance(seconds=31)
    async with gw.db() as s:
        r = await s.get(Outbox, oid)
    assert r.status == "pending" and r.attempts == 0


async def test_two_processes_send_a_peers_messages_in_order(gw, backend, monkeypatch):
    """Two workers (as two processes would) sharing one account: every peer still gets its
    messages in the order they were made, however the claims interleave."""
    sent: list[tuple[str, str]] = []

    async def send(target, message, *, idem_key, kind="reply"):
        await asyncio.sleep(0.002 * (hash(idem_key) % 3))  # sends of different lengths
        sent.append((target.identity.external_id, idem_key))
        return Receipt(platform_msg_id=idem_key)

    monkeypatch.setattr(gw.adapters["webchat"], "send", send)
    peers = [await customer(gw, f"u-{p}") for p in range(3)]
    async with gw.db() as s:
        for i in range(30):  # interleaved: u-0, u-1, u-2, u-0, …
            t = peers[i % 3]
            await gw.outbox.enqueue(s, t, Message.of_text(f"m{i}"), idem_key=f"{t.identity.external_id}:{i:02d}")
        await s.commit()
    workers = [OutboxWorker(gw) for _ in range(2)]

    async def drain(w):
        while True:
            got = await w.claim(4, "webchat")
            if not got:
                if not await _due(gw):
                    return
                await asyncio.sleep(0.01)
                continue
            await asyncio.gather(*(w.deliver(r) for r in got))

    await asyncio.gather(*(drain(w) for w in workers))
    for w in workers:
        await w._sent.close()
    assert len(sent) == 30
    for p in range(3):
        mine = [k for peer, k in sent if peer == f"u-{p}"]
        assert mine == sorted(mine), f"u-{p} got {mine}"


async def _due(gw) -> int:
    from sqlalchemy import func

    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(Outbox).where(Outbox.status.in_(("pending", "sending"))))).scalar()


async def test_a_retried_message_holds_its_peers_later_ones_back(gw, clock, backend, monkeypatch):
    """A send the platform refuses for now waits — and so does everything after it to that peer:
    the customer never gets the second message before the first."""
    rec = Recorder(fail=[Retryable("HTTP 503")])
    monkeypatch.setattr(gw.adapters["webchat"], "send", rec)
    target = await customer(gw)
    await enqueue(gw, target, n=3)
    w = OutboxWorker(gw)
    first = await w.claim(10, "webchat")
    assert [r.idem_key for r in first] == ["k-0", "k-1", "k-2"]
    results = [await w.deliver(r) for r in first]
    assert results == ["pending", "pending", "pending"] and rec.sent == []  # k-0 failed; k-1, k-2 wait behind it
    assert await w.claim(10, "webchat") == []  # k-0 is not due yet, and the others may not overtake it
    clock.advance(seconds=60)
    again = await w.claim(10, "webchat")
    for r in again:
        assert await w.deliver(r) == "sent"
    await w._sent.close()
    assert rec.sent == ["k-0", "k-1", "k-2"]


async def test_a_bulk_backlog_drains_at_once_and_relays_do_not_look_for_bulk_rows(db_url, clock):
    """Lanes look for bulk rows when this process wrote some (or once per poll interval), and keep
    looking while a claim returns any: a campaign's backlog larger than one claim is sent without
    waiting a poll interval per claim, and a stream of relays costs one claim per wake, not two."""
    from gateway.runtime import Gateway
    from tests.conftest import make_config

    gw = Gateway(make_config(db_url, outbox={"poll_interval": 30, "batch": 4, "linger_ms": 0}), clock=clock)
    sent = Recorder()
    gw.adapters["webchat"].send = sent
    await gw.start()
    try:
        await enqueue(gw, await customer(gw), n=13, kind="brief", prefix="bulk")
        gw.outbox.kick()
        for _ in range(100):
            if len(sent.sent) == 13:
                break
            await asyncio.sleep(0.02)
        assert sorted(sent.sent) == sorted(f"bulk-{i}" for i in range(13))  # not one claim per 30 s poll

        await asyncio.sleep(0.2)  # the lane's last look for bulk rows (its last claim returned some) finds none
        claims = []
        real = gw.outbox._claim

        async def counted(limit, account, *, conversation):
            claims.append(conversation)
            return await real(limit, account, conversation=conversation)

        gw.outbox._claim = counted
        for i in range(3):
            await enqueue(gw, await customer(gw, f"u-r{i}"), kind="reply", prefix=f"chat{i}")
            gw.outbox.kick()
            for _ in range(100):
                if len(sent.sent) == 14 + i:
                    break
                await asyncio.sleep(0.02)
        assert len(sent.sent) == 16
        assert claims and all(claims)  # only conversation claims: no bulk rows were written
    finally:
        await gw.stop()


async def test_a_lane_sends_on_while_its_records_commit(db_url):
    """A slot is free once the platform call is over: sends do not wait for the group commit that
    records them (which bounded a lane at `concurrency` sends per commit round trip)."""
    from gateway.runtime import Gateway
    from tests.conftest import make_config

    gw = Gateway(make_config(db_url, outbox={"concurrency": 2, "batch": 2, "linger_ms": 0}))
    sent = Recorder()
    gw.adapters["webchat"].send = sent
    record, slow = gw.outbox._sent._write, asyncio.Event()

    async def slow_record(batch):
        await slow.wait()  # the database is slow to record
        return await record(batch)

    gw.outbox._sent._write = slow_record
    await gw.start()
    try:
        for i in range(8):
            await enqueue(gw, await customer(gw, f"u-s{i}"), prefix=f"s{i}")
        gw.outbox.kick()
        for _ in range(100):
            if len(sent.sent) == 8:
                break
            await asyncio.sleep(0.02)
        assert len(sent.sent) == 8  # every call made while no record had committed yet
        slow.set()
        for _ in range(100):
            if all(r.status == "sent" for r in await rows(gw)):
                break
            await asyncio.sleep(0.02)
        assert [r.status for r in await rows(gw)] == ["sent"] * 8 and len(sent.sent) == 8
    finally:
        slow.set()
        await gw.stop()


async def test_a_send_recorded_after_the_server_dropped_its_connections_goes_out_once(pg_database):
    """Pooled connections are not pinged before use; one the server closed (a restart) is replaced
    at checkout. Before, the send's record failed on it, the row outlived its lease and the
    message was sent again (found by review)."""
    import asyncpg

    from gateway.runtime import Gateway
    from tests.conftest import _pg_dsn, _truncate, make_config

    await _truncate(pg_database)
    gw = Gateway(make_config(pg_database, outbox={"linger_ms": 0, "poll_interval": 3, "lease_seconds": 1}))
    gate, sent = asyncio.Event(), []

    async def send(target, message, *, idem_key, kind="reply"):
        sent.append(idem_key)
        await gate.wait()
        return Receipt(platform_msg_id=f"p-{len(sent)}")

    gw.adapters["webchat"].send = send
    await gw.start()
    try:
        for i in range(3):  # a few connections in the pool
            await customer(gw, f"w{i}")
        await enqueue(gw, await customer(gw))
        gw.outbox.kick()
        for _ in range(500):
            if sent:
                break
            await asyncio.sleep(0.01)
        c = await asyncpg.connect(_pg_dsn(pg_database))
        await c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        await c.close()
        await asyncio.sleep(0.05)
        gate.set()  # the call ends: its record is written on a connection from the pool
        for _ in range(60):
            if (await rows(gw))[0].status == "sent":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # past the lease: a row left "sending" would be sent again now
        assert sent == ["k-0"] and [(r.status, r.attempts) for r in await rows(gw)] == [("sent", 1)]
    finally:
        gate.set()
        await gw.stop()


@pytest.mark.parametrize("landed", [False, True])
async def test_a_sent_record_broken_mid_write_is_written_once(gw, landed):
    """The connection breaks under the group commit of "sent" records: written again if the
    commit did not land; left alone if it did (its pushes would be logged twice)."""
    from sqlalchemy.exc import DBAPIError

    await enqueue(gw, await customer(gw))
    w = gw.outbox
    (row,) = await w.claim(1)
    real, calls = w._write_sent, []

    async def breaks_once(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            if landed:
                await real(batch)
            raise DBAPIError("COMMIT", None, ConnectionError("gone"), connection_invalidated=True)
        return await real(batch)

    w._write_sent = breaks_once
    assert await w._record_sent([(row, Receipt(platform_msg_id="p-1"), gw.clock.now())]) == [True]
    assert len(calls) == (1 if landed else 2)
    (stored,) = await rows(gw)
    assert stored.status == "sent" and stored.platform_msg_id == "p-1"


async def test_a_failed_bulk_claim_still_hands_over_the_conversation_rows(gw):
    """The conversation rows are claimed (committed) first: if the bulk claim then fails, they are
    sent now, not left "sending" until their lease runs out (found by review)."""
    target = await customer(gw)
    await enqueue(gw, target, kind="reply", prefix="chat")
    await enqueue(gw, target, kind="push", prefix="bulk")
    real = gw.outbox._claim

    async def bulk_fails(limit, account, *, conversation):
        if not conversation:
            raise ConnectionError("the database went away")
        return await real(limit, account, conversation=conversation)

    gw.outbox._claim = bulk_fails
    assert [r.idem_key for r in await gw.outbox.claim(10)] == ["chat-0"]
    gw.outbox._claim = real
    assert [r.idem_key for r in await gw.outbox.claim(10)] == ["bulk-0"]


async def test_bulk_rows_committed_after_a_lane_looked_are_sent_at_the_kick(pg_database, clock):
    """A lane that woke while a campaign's transaction was open saw no bulk rows; the kick after the
    commit makes it look again at once, not a poll interval later (found by review)."""
    from gateway.runtime import Gateway
    from tests.conftest import _truncate, make_config

    await _truncate(pg_database)
    gw = Gateway(make_config(pg_database, outbox={"poll_interval": 30, "linger_ms": 0}), clock=clock)
    sent = Recorder()
    gw.adapters["webchat"].send = sent
    await gw.start()
    try:
        target = await customer(gw)
        await asyncio.sleep(0.1)  # the lanes' first round is over
        async with gw.db() as s:
            await gw.outbox.enqueue(s, target, Message.of_text("new!"), idem_key="camp-1", kind="brief")
            gw.outbox._lanes["webchat"].wake.set()  # something else wakes the lane meanwhile
            await asyncio.sleep(0.1)
            await s.commit()
        gw.outbox.kick()
        for _ in range(50):
            if sent.sent:
                break
            await asyncio.sleep(0.02)
        assert sent.sent == ["camp-1"]
    finally:
        await gw.stop()
