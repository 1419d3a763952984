"""Nothing acknowledged is lost: claims left pending by a crash are replayed, and applied once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import func, select

from gateway.model import Event, Identity, Message
from gateway.models import ChatMessage, InboundClaim, Interaction
from gateway.runtime import Gateway
from tests.conftest import make_config


def message_event(user: str, n: int) -> Event:
    return Event("message", "customer", Identity("webchat", "webchat", user), f"msg:{user}:{n}",
                 datetime.now(UTC), message=Message.of_text(f"hello {n}"), profile={"name": user})


async def count(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def test_claims_acked_before_a_crash_are_replayed_once(db_url, backend):
    crashed = Gateway(make_config(db_url))
    adapter = crashed.adapters["webchat"]
    for n in range(3):  # acknowledged to the platform, then the process died before processing
        events = [message_event("u-1", n)]
        assert await crashed.ingress.claim(adapter, events[0].dedupe_key, events) is not None
    await crashed.engine.dispose()

    restarted = Gateway(make_config(db_url))
    await restarted.start()
    try:
        assert await count(restarted, InboundClaim, InboundClaim.status == "pending") == 0
        assert await count(restarted, ChatMessage, ChatMessage.direction == "in") == 3
        assert await count(restarted, Interaction, Interaction.type == "message_in") == 3
        assert await restarted.ingress.replay_pending() == 0  # nothing is applied twice
    finally:
        await restarted.stop()


async def test_the_same_claim_processed_concurrently_applies_once(gw, backend):
    adapter = gw.adapters["webchat"]
    events = [message_event("u-2", 1)]
    claim_id = await gw.ingress.claim(adapter, events[0].dedupe_key, events)
    results = await asyncio.gather(*(gw.ingress.process(claim_id, events[0].dedupe_key, events) for _ in range(3)))
    assert sum(r is not None for r in results) == 1
    assert await count(gw, ChatMessage, ChatMessage.direction == "in") == 1


async def test_a_failing_handler_keeps_the_claim_for_retry(gw, monkeypatch):
    adapter = gw.adapters["webchat"]
    events = [message_event("u-3", 1)]
    claim_id = await gw.ingress.claim(adapter, events[0].dedupe_key, events)
    calls = []

    async def boom(ctx):
        calls.append(1)
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(gw.dispatcher, "dispatch", boom)
    try:
        await gw.ingress.process(claim_id, events[0].dedupe_key, events)
    except RuntimeError:
        pass
    async with gw.db() as s:
        claim = await s.get(InboundClaim, claim_id)
    assert claim.status == "pending" and claim.attempts == 1 and "database hiccup" in claim.last_error
    assert await count(gw, ChatMessage) == 0  # the failed attempt left nothing half-done
    monkeypatch.undo()
    assert await gw.ingress.process(claim_id, events[0].dedupe_key, events) is not None
    assert await count(gw, ChatMessage, ChatMessage.direction == "in") == 1


async def test_duplicate_claim_is_refused_by_the_database(gw, backend):
    adapter = gw.adapters["webchat"]
    events = [message_event("u-4", 1)]
    assert await gw.ingress.claim(adapter, "same-key", events) is not None
    assert await gw.ingress.claim(adapter, "same-key", events) is None
    # …but the same key on another account is a different message
    assert await gw.ingress.claim(gw.adapters["workbench"], "same-key", events) is not None


async def test_a_claim_survives_the_server_dropping_its_connections(pg_database):
    """Pooled connections are not pinged before use (a round trip per checkout on the hot path):
    when the server dropped them (a restart), the next claim still succeeds and is applied."""
    from sqlalchemy import text

    gw = Gateway(make_config(pg_database))
    await gw.start()
    try:
        adapter = gw.adapters["webchat"]
        first = [message_event("u-5", 1)]
        assert await gw.ingress.accept(adapter, first) == (False, [])
        async with gw.engine.connect() as c:  # every other backend of this database goes away
            await c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        second = [message_event("u-5", 2)]
        assert await gw.ingress.accept(adapter, second) == (False, [])  # acked: claimed durably
        for _ in range(200):
            if await count(gw, ChatMessage, ChatMessage.direction == "in") == 2:
                break
            await asyncio.sleep(0.05)
        assert await count(gw, ChatMessage, ChatMessage.direction == "in") == 2
    finally:
        await gw.stop()


async def test_a_claim_whose_commit_answer_was_lost_is_still_ours(gw, backend):
    """The first INSERT committed but the connection broke before the answer: the retry finds the
    key taken. It is this attempt's own claim (same receipt time, pending), so it is processed now
    and acked as accepted — not as a duplicate left to the replay half a minute later."""
    from sqlalchemy.exc import DBAPIError

    real, calls = gw.claim_db, []

    def flaky():
        s = real()
        if not calls:
            commit = s.commit

            async def commit_then_break():
                await commit()
                raise DBAPIError("COMMIT", None, ConnectionError("gone"), connection_invalidated=True)

            s.commit = commit_then_break
        calls.append(1)
        return s

    gw.claim_db = flaky
    await gw.start()
    events = [message_event("u-6", 1)]
    assert await gw.ingress.accept(gw.adapters["webchat"], events) == (False, [])
    assert len(calls) == 2 and gw.ingress.duplicates == 0
    for _ in range(100):
        if await count(gw, ChatMessage, ChatMessage.direction == "in") == 1:
            break
        await asyncio.sleep(0.05)
    assert await count(gw, ChatMessage, ChatMessage.direction == "in") == 1
    assert await count(gw, InboundClaim, InboundClaim.status == "pending") == 0
