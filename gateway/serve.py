"""`gateway serve`: migrate (SQLite by default), start, and shut down gracefully on SIGTERM/SIGINT.

With `--workers N` (N > 1, PostgreSQL) a supervisor starts N worker processes that all listen on the
same port (SO_REUSEPORT: the kernel spreads connections over them). Each is a full gateway sharing
the database like a separate instance — one scheduler leader among them, live messages across them
through the hub, outbox claims and caps shared. The supervisor forwards SIGTERM/SIGINT, waits for
the workers to drain, and starts a worker again if one dies."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time

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
# The cyclic GC's youngest generation is collected every 700 allocations by default: a relayed
# message allocates thousands of objects, and the older generations' collections that follow
# stalled acks (ack p99 ~300 ms → ~150 ms at 500 msgs/s in bench/inbound.py). Little on the
# message path makes cycles; they are still collected, less often.
GC_THRESHOLD = (100_000, 10, 10)


def tune_interpreter() -> None:
    """For a server process (and the benchmarks that stand in for one)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLD)


async def run(cfg: Config, *, migrate: bool = True, seed: bool = True, reuse_port: bool = False,
              supervisor: int | None = None) -> None:
    auto = cfg.database.auto_upgrade if cfg.database.auto_upgrade is not None else cfg.database.is_sqlite
    if migrate and auto:
        await upgrade(cfg.database.url)
    gw = Gateway(cfg)
    app = create_app(gw, manage_lifecycle=False)
    await gw.start()
    gc.freeze()  # what start-up made lives as long as the process: full collections skip it
    # access_log=None: our middleware logs each request with its request id (gateway/logs.py)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=cfg.server.shutdown_grace, access_log=None)
    await runner.setup()
    # Before the port opens: a SIGTERM that comes while the first-run seed still runs (a supervisor
    # or a test stopping a gateway that answers /readyz already) drains instead of killing us.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port, reuse_port=reuse_port or None)
    await site.start()
    if seed and cfg.server.first_run_seed:
        info = await seed_if_empty(gw)
        if info:
            print(banner(info), flush=True)
    log.info("serving on http://%s:%s (console /console/, accounts: %s)", cfg.server.host, cfg.server.port,
             ", ".join(gw.adapters))
    orphan = asyncio.create_task(_until_orphaned(supervisor, stop)) if supervisor else None
    await stop.wait()
    if orphan is not None:
        orphan.cancel()
    log.info("shutting down: draining in-flight work")
    await runner.cleanup()  # stop accepting, finish open requests
    await gw.stop()


async def _until_orphaned(supervisor: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (kill -9) stops too, rather than serve on unsupervised."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 - no event says the parent died: poll
        await asyncio.sleep(1)
    log.error("supervisor %s is gone; this worker stops", supervisor)
    stop.set()


def serve(cfg: Config) -> int:
    from gateway import logs

    logs.setup(cfg.server.log_format)
    tune_interpreter()
    n = cfg.server.worker_count(cfg.database.is_sqlite)
    if n == 1:
        asyncio.run(run(cfg))
        return 0
    return _supervise(cfg, n)


def _worker(cfg: Config, index: int, supervisor: int) -> None:
    from gateway import logs

    logs.setup(cfg.server.log_format)
    tune_interpreter()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    asyncio.run(run(cfg, migrate=False, seed=index == 0, reuse_port=True, supervisor=supervisor))


def _supervise(cfg: Config, n: int) -> int:
    stopping = False

    def stop(_sig, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    auto = cfg.database.auto_upgrade if cfg.database.auto_upgrade is not None else cfg.database.is_sqlite
    if auto:  # once, before any worker starts
        asyncio.run(upgrade(cfg.database.url))
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.Process] = {}

    def start(i: int) -> None:
        p = ctx.Process(target=_worker, args=(cfg, i, os.getpid()), name=f"gateway-worker-{i}", daemon=False)
        p.start()
        procs[i] = p

    for i in range(n):
        start(i)
    log.info("supervisor %s: %d workers on http://%s:%s", os.getpid(), n, cfg.server.host, cfg.server.port)
    restarts: dict[int, float] = {}
    while not stopping:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping:
                log.error("worker %d (pid %s) exited with %s; starting it again", i, p.pid, p.exitcode)
                if time.monotonic() - restarts.get(i, 0.0) < 5:
                    time.sleep(2)  # a worker that dies at once must not spin the machine
                restarts[i] = time.monotonic()
                start(i)
    for p in procs.values():
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + cfg.server.shutdown_grace + 15
    failed = 0
    for p in procs.values():
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            log.error("worker pid %s did not stop in time; killing it", p.pid)
            p.kill()
            p.join(5)
        failed += p.exitcode not in (0, -signal.SIGTERM)
    return 1 if failed else 0
