"""SQLite under faults: the disk fills up, or another process holds the write lock longer than the
busy timeout. Inbound requests are refused with 503 and the contract's error JSON (not a bare 500),
nothing is left half-written, and once the fault is gone the same request (same client_msg_id) goes
through and is processed exactly once."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import pytest
from sqlalchemy import event, func, select

from adapters.webchat.simulator import BrandApp
from gateway.app import create_app
from gateway.db import make_engine
from gateway.models import ChatMessage, InboundClaim
from gateway.runtime import Gateway
from tests.conftest import WEBCHAT_SECRET, make_config, make_world, wait_until

UNAVAILABLE = {"error": {"code": "unavailable", "message": "database busy or full, retry"}}
NO_LIMIT = 2_147_483_646


@pytest.fixture
async def faulty(tmp_path, sqlite_template, aiohttp_client):
    """A gateway on a SQLite file whose page cap the test sets, with a 1.5 s busy timeout (the
    gateway's own 30 s would make a "locked" test slow; the behaviour past it is the same)."""
    path = tmp_path / "gw.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"
    engine = make_engine(url)
    cap = {"pages": NO_LIMIT}

    @event.listens_for(engine.sync_engine, "connect")
    def _short_busy(dbapi_conn, _record):  # after make_engine's own pragmas
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=1500")
        cur.close()

    @event.listens_for(engine.sync_engine, "checkout")
    def _page_cap(dbapi_conn, _record, _proxy):  # "disk full": no page past the cap, on every connection
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA max_page_count={cap['pages']}")
        cur.close()

    gw = Gateway(make_config(url, ingress={"replay_after_seconds": 1}), engine=engine)
    client = await aiohttp_client(create_app(gw))
    world = await make_world(gw)
    alice = await BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET).login(
        "u-alice", "Alice")
    assert (await alice.bind(world.invite))[0] == 200
    yield gw, alice, cap, path
    await engine.dispose()


async def settled_once(gw, client_msg_ids: list[str]) -> None:
    """Every claim processed; each message stored exactly once; the file intact."""
    async def done():
        async with gw.db() as s:
            return (await s.execute(select(func.count()).select_from(InboundClaim)
                                    .where(InboundClaim.status != "done"))).scalar() == 0

    await wait_until(done, timeout=10)
    async with gw.db() as s:
        stored = dict((await s.execute(select(ChatMessage.client_msg_id, func.count()).where(
            ChatMessage.direction == "in", ChatMessage.client_msg_id.in_(client_msg_ids))
            .group_by(ChatMessage.client_msg_id))).all())
    assert stored == dict.fromkeys(client_msg_ids, 1)


def integrity(path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


async def test_disk_full_is_503_nothing_half_written_and_the_retry_lands_once(faulty):
    gw, alice, cap, path = faulty
    assert (await alice.say("before", client_msg_id="m-before"))[0] == 202
    await settled_once(gw, ["m-before"])
    with sqlite3.connect(path) as conn:
        cap["pages"] = conn.execute("PRAGMA page_count").fetchone()[0]  # no room to grow
    accepted, refused, body = [], None, None
    for i in range(60):  # fill what free pages are left until a write needs a new one
        status, body = await alice.say(f"{i} " + "满" * 1500, client_msg_id=f"m-{i}")
        if status != 202:
            refused = i
            break
        accepted.append(f"m-{i}")
    assert refused is not None, "the page cap never bit"
    assert (status, body) == (503, UNAVAILABLE)

    cap["pages"] = NO_LIMIT  # space freed
    status, body = await alice.say(f"{refused} " + "满" * 1500, client_msg_id=f"m-{refused}")
    assert status == 202 and body["duplicate"] is False
    # accepted while full but not yet processed: replayed now, each once
    await settled_once(gw, ["m-before", *accepted, f"m-{refused}"])
    assert integrity(path) == "ok"


async def test_database_locked_is_503_and_the_retry_lands_once(faulty):
    gw, alice, _cap, path = faulty

    def lock() -> sqlite3.Connection:  # another process's long write transaction
        conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        return conn

    holder = await asyncio.to_thread(lock)  # in a thread: the gateway may be mid-write on this loop
    try:
        status, body = await alice.say("在吗", client_msg_id="m-locked")
        assert (status, body) == (503, UNAVAILABLE)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status, body = await alice.say("在吗", client_msg_id="m-locked")
    assert status == 202 and body["duplicate"] is False
    await settled_once(gw, ["m-locked"])
    assert integrity(path) == "ok"
