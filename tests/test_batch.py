"""Coalescer: concurrent sends with one key share one platform call; each caller gets its own result."""

from __future__ import annotations

import asyncio

import pytest

from gateway.adapter import Permanent, Retryable
from gateway.batch import Coalescer


async def test_concurrent_items_with_one_key_make_one_call_and_get_their_own_results():
    calls = []

    async def call(key, items):
        calls.append((key, items))
        return [Permanent("no", code="x") if i == "bad" else f"{key}:{i}" for i in items]

    c = Coalescer(call, limit=10, window=0.05)
    results = await asyncio.gather(*(c.submit("k", i) for i in ("a", "b", "bad")), c.submit("other", "z"),
                                   return_exceptions=True)
    assert results[:2] == ["k:a", "k:b"] and isinstance(results[2], Permanent) and results[3] == "other:z"
    assert sorted(calls) == [("k", ["a", "b", "bad"]), ("other", ["z"])]


async def test_a_full_group_goes_at_once_and_the_next_item_starts_a_new_call():
    calls = []

    async def call(key, items):
        calls.append(list(items))
        return items

    c = Coalescer(call, limit=2, window=5)  # a full group must not wait for the window
    first = asyncio.gather(c.submit("k", 0), c.submit("k", 1))
    assert await asyncio.wait_for(first, 1) == [0, 1]
    assert calls == [[0, 1]]


async def test_a_failed_call_fails_every_item_of_it():
    async def call(key, items):
        raise Retryable("platform busy")

    c = Coalescer(call, limit=10, window=0.05)
    results = await asyncio.gather(c.submit("k", 1), c.submit("k", 2), return_exceptions=True)
    assert all(isinstance(r, Retryable) for r in results) and c.calls == 1


async def test_cancelling_the_first_caller_cancels_its_group():
    started = asyncio.Event()

    async def call(key, items):
        started.set()
        await asyncio.sleep(10)

    c = Coalescer(call, limit=10, window=0.01)
    lead = asyncio.create_task(c.submit("k", 1))
    follower = asyncio.create_task(c.submit("k", 2))
    await started.wait()
    lead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower


async def test_closing_a_batcher_finishes_the_batch_being_written():
    """close() used to wait only for queued items: a batch already being written was cancelled
    mid-write (the outbox's "sent" records were lost, and those sends went out again)."""
    from gateway.batch import Batcher

    written: list[list[int]] = []

    async def slow_write(items):
        await asyncio.sleep(0.2)
        written.append(items)
        return [i * 10 for i in items]

    b = Batcher(slow_write)
    pending = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0.05)  # the write of [1] is under way, nothing else is queued
    await b.close()
    assert written == [[1]] and pending.done() and pending.result() == 10
