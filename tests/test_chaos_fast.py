"""The chaos trials (chaos/, `make chaos`) in small, plus regression tests for what they found."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from aiohttp import web
from sqlalchemy import insert

from adapters.dingtalk.simulator import SIM_FAULT, DingTalkSimulator
from chaos import kill9, platform
from chaos.common import Database
from gateway import scheduler
from gateway.clock import FakeClock
from gateway.model import Identity, Message, Target
from gateway.models import Campaign
from gateway.runtime import Gateway
from tests.conftest import _truncate, make_config


async def test_kill9_trials_deliver_every_push_once(pg_database, tmp_path):
    db = Database(pg_database)
    try:  # trial 1: one gateway; trial 2: two, one of them killed
        res = await kill9.run(db, trials=2, customers=500, rng=random.Random(7), logdir=tmp_path)
    finally:
        await db.close()
    assert res.problems == []
    assert (res.trials, res.expected, res.delivered, res.duplicates, res.lost) == (2, 1000, 1000, 0, 0)
    assert res.extra["kills"] >= 2 and res.extra["two_instance_trials"] == 1


async def test_platform_faults_relay_every_message_once_within_the_cap(pg_database, tmp_path):
    db = Database(pg_database)
    try:
        res = await platform.run(db, messages=200, customers=40, rate=50, rng=random.Random(7), logdir=tmp_path)
    finally:
        await db.close()
    assert res.problems == []
    assert (res.expected, res.delivered, res.duplicates, res.lost) == (200, 200, 0, 0)
    assert res.extra["over_cap"] == 0 and res.extra["early_retries"] == 0 and res.extra["injected"] > 0


async def test_simulator_fails_a_seeded_share_of_calls_and_marks_them(aiohttp_client):
    sim = DingTalkSimulator(app_key="k", app_secret="s", robot_code="r", agent_id="1")
    sim.fault_rate, sim.fault_kinds, sim.fault_random = 0.5, ("http500", "http429"), random.Random(1)
    marks: list[str | None] = []

    @web.middleware
    async def outer(request, handler):
        resp = await handler(request)
        marks.append(request.get(SIM_FAULT))
        return resp

    app = sim.app()
    app.middlewares.insert(0, outer)
    cli = await aiohttp_client(app)
    statuses = [(await cli.get("/gettoken", params={"appkey": "k", "appsecret": "s"})).status for _ in range(200)]
    assert 60 < sim.injected["http500"] + sim.injected["http429"] < 140  # about half, both kinds
    assert sim.injected["http500"] and sim.injected["http429"]
    assert statuses.count(500) == sim.injected["http500"] and statuses.count(429) == sim.injected["http429"]
    assert sum(m is not None for m in marks) == sum(sim.injected.values())
    assert (await cli.get("/sim-files/none")).status == 404 and marks[-1] is None  # not an API call: never failed
    sim.qps_limit, sim.fault_rate = 1, 0.0
    await cli.get("/gettoken", params={"appkey": "k", "appsecret": "s"})
    await cli.get("/gettoken", params={"appkey": "k", "appsecret": "s"})
    assert (sim.throttled, marks[-1]) == (1, "qps")  # over the cap: counted apart from injected faults


# -- regressions for what `make chaos` found ------------------------------------------------------------


async def test_a_claim_takes_at_most_its_limit_whatever_plan_postgresql_caches(pg_database):
    """With statistics saying the outbox is empty, PostgreSQL cached a plan that rescanned the
    `LIMIT … FOR UPDATE SKIP LOCKED` pick per row: one claim took every due row."""
    await _truncate(pg_database)
    db = Database(pg_database)
    await db.q("ANALYZE outbox")
    await db.close()
    gw = Gateway(make_config(pg_database, database={"url": pg_database, "pool_size": 1}))
    try:
        for _ in range(8):  # an idle gateway polling an empty outbox: the generic plan gets cached
            await gw.outbox.claim(10)
        async with gw.db() as s:
            for i in range(300):
                await gw.outbox.enqueue(s, Target(Identity("webchat", "webchat", f"u-{i}")), Message.of_text(f"m{i}"),
                                        idem_key=f"k{i}")
            await s.commit()
        assert len(await gw.outbox.claim(10)) == 10
    finally:
        await gw.engine.dispose()


async def test_a_customers_message_to_the_clerk_goes_before_a_campaigns_backlog(gw):
    async with gw.db() as s:
        for i in range(30):
            await gw.outbox.enqueue(s, Target(Identity("webchat", "webchat", f"u-{i}"), customer_id=None),
                                    Message.of_text("新品"), idem_key=f"push-{i}", kind="push")
        await gw.outbox.enqueue(s, Target(Identity("workbench", "workbench", "1")), Message.of_text("【A #1】在吗"),
                                idem_key="relay-1", kind="relay")
        await s.commit()
    assert [r.idem_key for r in await gw.outbox.claim(1)] == ["relay-1"]


async def test_a_run_dropped_by_a_failed_materialisation_resumes_at_the_next_tick(db_url):
    clock = FakeClock(datetime(2026, 11, 29, 4, 0, tzinfo=UTC))
    gw = Gateway(make_config(db_url), clock=clock)
    try:
        async with gw.db() as s:
            await s.execute(insert(Campaign).values(
                name="c", kind="notice", content={"text": "hi"}, audience={}, sender="advisor",
                schedule={"at": clock.now().isoformat()}, status="scheduled", next_run_at=clock.now(),
                created_at=clock.now()))
            await s.commit()
        await scheduler.tick(gw)
        run = await scheduler.claim_run(gw, "gw-1:scheduler")
        assert run is not None  # ... and materialize() raised here: the database went away
        assert await scheduler.claim_run(gw, "gw-2:scheduler") is None  # another worker waits for the lease
        assert await scheduler.claim_run(gw, "gw-1:scheduler") == run  # its own worker takes it up again
    finally:
        await gw.engine.dispose()


def test_chaos_cli_rejects_unknown_faults(capsys):
    from chaos.__main__ import main

    with pytest.raises(SystemExit):
        asyncio.run(main(["--fault", "nope"]))
    assert "invalid choice" in capsys.readouterr().err
