"""A property run of the admin API against its own /openapi.json (schemathesis): whatever the
generated requests, the server answers 2xx–4xx, never 5xx, and every error has the contract's shape.

The gateway runs for real on a loopback port in a background thread (schemathesis calls are
blocking), over SQLite with a store, clerks, a customer and a campaign so ids in paths often exist.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from gateway.app import create_app
from gateway.db import upgrade
from gateway.openapi import document
from gateway.runtime import Gateway
from tests.conftest import make_config, make_world
from tests.test_serve import free_port

schema = schemathesis.openapi.from_dict(document())


class Server:
    def __init__(self, db_url: str):
        self.db_url, self.port = db_url, free_port()
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        await upgrade(self.db_url)
        self.gw = Gateway(make_config(self.db_url))
        self.world = await make_world(self.gw)
        self.runner = web.AppRunner(create_app(self.gw), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}")
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    srv.ready.wait(60)
    if srv.error:
        raise srv.error
    yield srv
    srv.stop()
    t.join(30)


@schema.parametrize()
@settings(max_examples=int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "12")), deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case, server):
    resp = case.call(base_url=f"http://127.0.0.1:{server.port}",
                     headers={"Authorization": f"Bearer {server.world.admin_token}"}, timeout=30)
    assert resp.status_code < 500, f"{case.method} {case.formatted_path} → {resp.status_code}: {resp.text[:500]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
