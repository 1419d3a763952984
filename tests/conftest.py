"""Fixtures: a migrated database on SQLite or PostgreSQL, a gateway, and its HTTP client.

PostgreSQL is required: tests that use it fail (never skip) when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from gateway.app import create_app
from gateway.clock import Clock
from gateway.config import build_config
from gateway.db import make_engine, session_factory, upgrade_sync
from gateway.models import metadata
from gateway.runtime import Gateway

PG_URL = os.environ.get("TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
WEBCHAT_SECRET = "test-webchat-secret-0123456789"


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """Migrate once; each test gets a copy (migrating per test would dominate the run time)."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


def _in_thread(coro) -> None:
    """Session fixtures may be set up from inside the test's running loop: use a fresh one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_database() -> str:
    """A fresh PostgreSQL database for this run, migrated with Alembic, dropped at the end."""
    name = f"gw_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        try:
            conn = await asyncpg.connect(_pg_dsn(PG_URL), timeout=10)
        except (OSError, asyncpg.PostgresError) as e:
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({e}); start it (see .ci/run)", pytrace=False)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _in_thread(admin(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade_sync(url)
    yield url
    _in_thread(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
async def db_url(request, tmp_path) -> str:
    """SQLite by default; tests (or modules) that take `backend` run on both."""
    kind = request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"
    if kind == "sqlite":
        path = tmp_path / "gw.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    await _truncate(url)
    return url


def make_config(db_url: str, **overrides):
    data = {
        "database": {"url": db_url},
        "server": {"first_run_seed": False, "shutdown_grace": 2},
        "outbox": {"poll_interval": 0.05, "backoff_base": 1.5},
        "ingress": {"replay_after_seconds": 5},
        "accounts": [
            {"name": "workbench", "platform": "workbench"},
            {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET, "dev_login": True},
        ],
    }
    for k, v in overrides.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return build_config(data, env={})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gw(db_url, clock):
    g = Gateway(make_config(db_url), clock=clock)
    yield g
    if g.started:
        await g.stop()
    else:
        await g.engine.dispose()


@pytest.fixture
async def client(gw, aiohttp_client):
    return await aiohttp_client(create_app(gw))


@dataclass
class World:
    store_id: int
    clerk_id: int
    clerk_token: str
    admin_token: str
    invite: str
    clerk2_id: int
    clerk2_token: str


async def make_world(gw: Gateway) -> World:
    from gateway import advisors
    from gateway.models import Clerk, Store
    from gateway.tokens import create_token

    async with session_factory(gw.engine)() as s:
        store = Store(name="静安店", city="上海")
        s.add(store)
        await s.flush()
        clerk = Clerk(name="林小雨", display_name="小林", store_id=store.id)
        clerk2 = Clerk(name="王芳", display_name="芳芳", store_id=store.id)
        s.add_all([clerk, clerk2])
        await s.flush()
        _, clerk_token = await create_token(s, "clerk", clerk_id=clerk.id)
        _, clerk2_token = await create_token(s, "clerk", clerk_id=clerk2.id)
        _, admin = await create_token(s, "admin")
        invite = await advisors.create_invite(s, clerk.id, source="counter")
        await s.commit()
        return World(store.id, clerk.id, clerk_token, admin, invite.code, clerk2.id, clerk2_token)


@pytest.fixture
async def world(gw) -> World:
    return await make_world(gw)


async def wait_until(pred, timeout: float = 8.0) -> None:
    """Poll `pred` (plain or returning an awaitable) until it is truthy; fail after `timeout` s."""
    import inspect
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = pred()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")
