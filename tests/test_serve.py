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

from adapters.webchat.simulator import BrandApp

ROOT = Path(__file__).resolve().parents[1]


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
            for _ in range(100):
                try:
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("gateway did not become ready")
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
