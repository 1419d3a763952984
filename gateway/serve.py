"""`gateway serve`: migrate (SQLite by default), start, and shut down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.db import upgrade
from gateway.runtime import Gateway
from gateway.seed import banner, seed_if_empty

log = logging.getLogger("gateway")


# aiosqlite runs each statement in a thread; with the default 5 ms switch interval a busy event
# loop makes every one of those hand-offs wait for the GIL. 0.5 ms keeps them short.
SWITCH_INTERVAL = 0.0005


async def run(cfg: Config) -> None:
    auto = cfg.database.auto_upgrade if cfg.database.auto_upgrade is not None else cfg.database.is_sqlite
    if auto:
        await upgrade(cfg.database.url)
    gw = Gateway(cfg)
    app = create_app(gw, manage_lifecycle=False)
    await gw.start()
    # access_log=None: our middleware logs each request with its request id (gateway/logs.py)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=cfg.server.shutdown_grace, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port)
    await site.start()
    if cfg.server.first_run_seed:
        info = await seed_if_empty(gw)
        if info:
            print(banner(info), flush=True)
    log.info("serving on http://%s:%s (console /console/, accounts: %s)", cfg.server.host, cfg.server.port,
             ", ".join(gw.adapters))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight work")
    await runner.cleanup()  # stop accepting, finish open requests
    await gw.stop()


def serve(cfg: Config) -> int:
    from gateway import logs

    logs.setup(cfg.server.log_format)
    sys.setswitchinterval(SWITCH_INTERVAL)
    asyncio.run(run(cfg))
    return 0
