"""`gateway serve` as a real process: migrates SQLite itself, serves, and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

from adapters.webchat.simulator import BrandApp

ROOT = Path(__file__).resolve().parents[1]


async def until_ready(http: aiohttp.ClientSession, base: str, tries: int = 100, pause: float = 0.1) -> None:
    """Poll /readyz until the gateway answers 200."""
    for _ in range(tries):
        try:
            async with http.get(f"{base}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(pause)
    raise AssertionError("gateway did not become ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_migrates_serves_and_drains_on_sigterm(tmp_path):
    port, db = free_port(), tmp_path / "serve.db"
    env = {**os.environ, "GATEWAY__DATABASE__URL": f"sqlite+aiosqlite:///{db}", "GATEWAY__SERVER__PORT": str(port),
           "GATEWAY__ACCOUNTS__WEBCHAT__SECRET": "serve-test-secret-0123"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await until_ready(http, base)
            customer = await BrandApp(http, base, "webchat", "serve-test-secret-0123").login("u-1", "甲")
            statuses = [(await customer.say(f"m{i}"))[0] for i in range(20)]
            assert statuses == [202] * 20
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    text = out.decode()
    assert "First run" in text and "admin API token" in text  # the first-run seed printed its tokens
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM inbound_claim WHERE status != 'done'").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM message WHERE direction = 'in'").fetchone() == (20,)
    assert conn.execute("SELECT count(*) FROM outbox WHERE status != 'sent'").fetchone() == (0,)


async def test_a_sigterm_as_soon_as_it_answers_still_drains(tmp_path):
    """SIGTERM right after /readyz first answers — the first-run seed may still be running —
    stops the gateway cleanly (exit 0, the seed finished and printed) instead of killing it
    (-15: the signal handlers were set only after the seed; CI hit it once)."""
    port, db = free_port(), tmp_path / "serve.db"
    env = {**os.environ, "GATEWAY__DATABASE__URL": f"sqlite+aiosqlite:///{db}", "GATEWAY__SERVER__PORT": str(port),
           "GATEWAY__ACCOUNTS__WEBCHAT__SECRET": "serve-test-secret-0123"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            await until_ready(http, f"http://127.0.0.1:{port}", tries=200, pause=0.02)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()[-2000:]
    assert "First run" in out.decode()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_workers_share_one_port_and_relay_across_processes(backend, db_url, tmp_path):
    """`--workers 2`: two processes answer on one port (SO_REUSEPORT); a relay processed by either
    reaches the clerk's WebSocket on whichever worker holds it, once; SIGTERM drains both."""
    from adapters.workbench.simulator import ClerkClient
    from gateway.config import build_config
    from gateway.runtime import Gateway
    from tests.conftest import make_world

    gw = Gateway(build_config({"database": {"url": db_url}, "server": {"first_run_seed": False}}, env={}))
    world = await make_world(gw)
    await gw.engine.dispose()
    port, secret = free_port(), "workers-test-secret-0123"
    env = {**os.environ, "GATEWAY__DATABASE__URL": db_url, "GATEWAY__SERVER__PORT": str(port),
           "GATEWAY__SERVER__FIRST_RUN_SEED": "false", "GATEWAY__ACCOUNTS__WEBCHAT__SECRET": secret}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", "--workers", "2",
                                                cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        instances: set[str] = set()
        for _ in range(300):  # fresh connections until both workers have answered
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        instances.add((await r.json())["instance"])
            except aiohttp.ClientError:
                pass
            if len(instances) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(instances) == 2, f"answered by {instances}"
        async with aiohttp.ClientSession() as clerk_http:
            clerk = ClerkClient(clerk_http, base, world.clerk_token)
            async with clerk.ws() as ws:
                customers = []
                for i in range(6):  # each on its own connection: spread over both workers
                    http = aiohttp.ClientSession()
                    c = await BrandApp(http, base, "webchat", secret).login(f"w-{i}", f"顾客{i}")
                    assert (await c.bind(world.invite))[0] == 200
                    customers.append((http, c))
                for i, (_, c) in enumerate(customers):
                    assert (await c.say(f"hello {i}"))[0] == 202
                seen: list[str] = []
                while len([t for t in seen if "】hello " in t]) < 6:
                    msg = await asyncio.wait_for(ws.receive_json(), 15)
                    seen.append(msg["text"])
                relays = sorted(t.split("】", 1)[1] for t in seen if "】hello " in t)
                assert relays == [f"hello {i}" for i in range(6)]
                for http, _ in customers:
                    await http.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
