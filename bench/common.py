"""What the bench scripts share: load generators, percentiles, the bare aiohttp baseline, temporary
databases, hub observers, the machine line, tables and profiles.

Two load generators, the same for the bare handler and the gateway:

  * `drive` — closed loop: C workers share a counter and post N messages in all; latency is
    `perf_counter()` around each POST. Measures capacity (msgs/s) at a fixed concurrency.
  * `open_loop` — fixed rate: request i is due at start + i / rate and is started then whether or
    not earlier ones were answered; its latency is measured from that *due* time, so time spent
    queued behind a slow server (or a late generator) counts (no coordinated omission).

A request is `(url, headers, body)`: a dict body is sent as JSON, bytes as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from gateway import advisors  # noqa: E402
from gateway.db import session_factory, upgrade  # noqa: E402
from gateway.models import Clerk, Outbox, Store  # noqa: E402
from gateway.tokens import create_token  # noqa: E402

PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
WARMUP = 200
BASELINE_ROUNDS = 3
STALL = 60.0  # seconds without a new relay after which a wait gives up
TEXT = "这款包有红色吗？周末想去店里看看"
# A benchmark's few customers each send far more than a person could: the per-customer flood gate
# (policies.customer_messages_per_minute) would hold most of it back, so it is off here.
BENCH_POLICIES = {"customer_messages_per_minute": None}

Request = tuple[str, dict, "dict | bytes"]
RequestFor = Callable[[int, str], Request]


class BenchError(Exception):
    """Something failed (a refused request, a relay missing, the database unreachable): exit 1."""


# -- statistics -------------------------------------------------------------------------------------


def pct(values: Iterable[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Stats:
    n: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    max_ms: float = float("nan")

    @classmethod
    def of(cls, latencies_ms: list[float], seconds: float, errors: int = 0) -> Stats:
        return cls(len(latencies_ms), seconds, pct(latencies_ms, 50), pct(latencies_ms, 99), errors,
                   max(latencies_ms) if latencies_ms else float("nan"))

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        def num(v):
            if not isinstance(v, float):
                return v
            return None if math.isnan(v) else "inf" if math.isinf(v) else round(v, 3)

        d = {k: num(v) for k, v in asdict(self).items()}
        return {**d, "msgs_per_s": round(self.rate, 1)}


# -- load generators --------------------------------------------------------------------------------


@dataclass
class Load:
    """What one load run saw. `sent_at[seq]` is when the request started (closed loop) or was due
    (open loop); `done_at[seq]` when its answer was read."""

    started: float = 0.0
    finished: float = 0.0
    window_end: float = 0.0  # open loop: when the last request was due
    latencies: list[float] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)
    done_at: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    max_start_lag: float = 0.0  # open loop: how late the generator started a request, at worst
    last_start: float = 0.0  # open loop: when the last request was actually started

    def stats(self) -> Stats:
        return Stats.of([x * 1000 for x in self.latencies], self.finished - self.started, len(self.errors))


async def _post(http: aiohttp.ClientSession, req: Request) -> int:
    url, headers, body = req
    kw = {"json": body} if isinstance(body, dict) else {"data": body}
    async with http.post(url, headers=headers, **kw) as resp:
        await resp.read()
        return resp.status


async def drive(http: aiohttp.ClientSession, request_for: RequestFor, n: int, concurrency: int, *,
                tag: str = "m", expect: int = 202) -> Load:
    """Closed loop: C workers share a counter and post N requests in all."""
    load = Load()
    counter = iter(range(n))

    async def worker() -> None:
        for seq in counter:
            req = request_for(seq, tag)
            t0 = time.perf_counter()
            load.sent_at[seq] = t0
            try:
                status = await _post(http, req)
            except (aiohttp.ClientError, TimeoutError) as e:
                load.errors.append(f"{type(e).__name__}: {e}")
                continue
            now = time.perf_counter()
            load.done_at[seq] = now
            load.latencies.append(now - t0)
            if status != expect:
                load.errors.append(f"HTTP {status}")

    load.started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.finished = time.perf_counter()
    return load


async def open_loop(http: aiohttp.ClientSession, request_for: RequestFor, rate: float, seconds: float, *,
                    tag: str = "m", expect: int = 202) -> Load:
    """Fixed rate: request i is started at start + i / rate regardless of earlier answers; its
    latency runs from that due time (queueing in the client, the network or the server included)."""
    n = max(1, int(rate * seconds))
    load = Load()
    tasks: set[asyncio.Task] = set()

    async def one(seq: int, due: float) -> None:
        try:
            status = await _post(http, request_for(seq, tag))
        except (aiohttp.ClientError, TimeoutError) as e:
            load.errors.append(f"{type(e).__name__}: {e}")
            return
        now = time.perf_counter()
        load.done_at[seq] = now
        load.latencies.append(now - due)
        if status != expect:
            load.errors.append(f"HTTP {status}")

    start = time.perf_counter() + 0.01
    load.started = start
    i = 0
    while i < n:
        now = time.perf_counter()
        due_now = min(n, math.floor((now - start) * rate) + 1)
        while i < due_now:
            due = start + i / rate
            load.sent_at[i] = due
            load.max_start_lag = max(load.max_start_lag, now - due)
            task = asyncio.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    load.window_end = start + (n - 1) / rate
    load.last_start = time.perf_counter()
    while tasks:
        await asyncio.gather(*list(tasks))
    load.finished = max(load.done_at.values(), default=time.perf_counter())
    return load


def _child_load(reqs: list[Request], n: int, concurrency: int, limit: int, timeout: float,
                rate: float | None, seconds: float | None, expect: int) -> dict:
    """In a child process: one load run over `reqs` (full URLs); the Load as a dict."""

    async def go() -> Load:
        async with client(limit, timeout) as http:
            request_for = lambda seq, tag: reqs[seq]  # noqa: E731
            if rate:
                return await open_loop(http, request_for, rate, seconds, expect=expect)
            return await drive(http, request_for, n, concurrency, expect=expect)

    return asdict(asyncio.run(go()))


def separate_process_ok() -> bool:
    """perf_counter must be one clock for every process (CLOCK_MONOTONIC on Linux) to compare the
    child's send times with the relays' arrival times here."""
    return "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation


async def load_in_child(reqs: list[Request], *, concurrency: int, limit: int, timeout: float,
                        rate: float | None = None, seconds: float | None = None, expect: int = 202) -> Load:
    """The same load generator in a separate process, so it does not share the event loop (and the
    core) of the server under test — as the platforms' servers do not. Times are comparable with
    this process's perf_counter (see separate_process_ok)."""
    import concurrent.futures
    import multiprocessing

    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        d = await loop.run_in_executor(pool, _child_load, reqs, len(reqs), concurrency, limit, timeout, rate,
                                       seconds, expect)
    return Load(**d)


def client(limit: int, timeout: float = 60.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


# -- servers ----------------------------------------------------------------------------------------


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BareShape:
    """What the bare handler answers: the gateway's ack for the same request, minus all the work.
    `echo_json`: parse the JSON body and answer the webchat/workbench ack (202 + JSON)."""

    status: int = 200
    text: str | None = None
    echo_json: bool = False


def bare_app(shape: BareShape) -> web.Application:
    """One handler for every POST path: reads the body, answers like the gateway's ack."""

    async def handler(request: web.Request) -> web.Response:
        if shape.echo_json:
            body = await request.json()
            return web.json_response({"client_msg_id": body.get("client_msg_id"), "duplicate": False,
                                      "status": "accepted"}, status=shape.status)
        await request.read()
        return web.Response(status=shape.status, text=shape.text)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    return app


async def run_baseline(shape: BareShape, requests_for: Callable[[str], RequestFor], *, messages: int,
                       concurrency: int, rounds: int = BASELINE_ROUNDS, warmup: int = WARMUP,
                       rate: float | None = None, seconds: float | None = None, limit: int | None = None,
                       child: bool = False, timeout: float = 60.0) -> Stats:
    """The bare handler under the same load generator: the median of `rounds` closed-loop runs
    (one run takes well under a second and is easily disturbed), or one fixed-rate run.
    `requests_for(base_url)` gives the request builder aimed at the bare server; `child`: the
    measured runs come from a separate process (`load_in_child`)."""
    runner, server = await serve(bare_app(shape))
    request_for = requests_for(server)
    n = int(rate * seconds) if rate else messages
    runs: list[Stats] = []
    try:
        async with client(limit or concurrency, timeout) as http:
            await drive(http, request_for, warmup, concurrency, tag="w", expect=shape.status)
            for _ in range(1 if rate else rounds):
                if child:
                    load = await load_in_child([request_for(i, "m") for i in range(n)], concurrency=concurrency,
                                               limit=limit or concurrency, timeout=timeout, rate=rate,
                                               seconds=seconds, expect=shape.status)
                elif rate:
                    load = await open_loop(http, request_for, rate, seconds, expect=shape.status)
                else:
                    load = await drive(http, request_for, messages, concurrency, expect=shape.status)
                if load.errors:
                    raise BenchError(f"baseline: {len(load.errors)} failed requests, first: {load.errors[0]}")
                runs.append(load.stats())
    finally:
        await runner.cleanup()
    return sorted(runs, key=lambda st: st.rate)[len(runs) // 2]


# -- databases --------------------------------------------------------------------------------------


def pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def pg_admin_url() -> str:
    return os.environ.get("TEST_PG_URL", PG_DEFAULT)


class Database:
    """A temporary SQLite file, or a fresh PostgreSQL database dropped at the end."""

    def __init__(self, kind: str):
        self.kind = kind
        self.url = ""
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._pg_name: str | None = None
        self._pg_admin = pg_admin_url()

    async def _pg(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(pg_dsn(self._pg_admin), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def __aenter__(self) -> str:
        if self.kind == "sqlite":
            self._tmp = tempfile.TemporaryDirectory(prefix="gw-bench-")
            self.url = f"sqlite+aiosqlite:///{Path(self._tmp.name) / 'bench.db'}"
        else:
            self._pg_name = f"gw_bench_{uuid.uuid4().hex[:10]}"
            try:
                await self._pg(f'CREATE DATABASE "{self._pg_name}"')
            except Exception as e:
                raise BenchError(f"PostgreSQL at {self._pg_admin} is not usable: {type(e).__name__}: {e}") from e
            self.url = self._pg_admin.rsplit("/", 1)[0] + f"/{self._pg_name}"
        await upgrade(self.url)
        return self.url

    async def __aexit__(self, *exc) -> None:
        if self._pg_name:
            await self._pg(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
        if self._tmp:
            self._tmp.cleanup()


# -- deadlocks and retries (every run prints them) --------------------------------------------------


BATCH_FALLBACK = re.compile(r"batch of .* failed", re.IGNORECASE)  # gateway.ingress: applied one claim at a time


async def pg_deadlocks(url: str) -> int | None:
    """`pg_stat_database.deadlocks` of the database `url` names; None when it is not PostgreSQL."""
    if not url.startswith("postgresql"):
        return None
    import asyncpg

    name = url.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(pg_dsn(pg_admin_url()), timeout=10)
    try:
        return int(await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = $1", name) or 0)
    finally:
        await conn.close()


async def pg_sessions_gone(url: str, timeout: float = 10.0) -> None:
    """Wait until nobody else is connected to the database. A backend publishes its statistics
    (the deadlock counter among them) when it goes idle for a while or exits: read them after."""
    import asyncpg

    name = url.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(pg_dsn(pg_admin_url()), timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and await conn.fetchval(  # noqa: ASYNC110 - polls the server
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # the last one's exit has flushed its counters by now, or nearly
    finally:
        await conn.close()


class RunHealth:
    """Deadlocks and retries of one gateway run (issue 17, aim 6: every bench run prints them, and
    the aim is 0 deadlocks). `start()` before the gateway starts, `finish()` after it stopped and
    before the database is dropped:

      * `pg_deadlocks` — the delta of PostgreSQL's `pg_stat_database.deadlocks` for the run's
        database (None on SQLite);
      * `log_deadlocks`, `batch_fallbacks` — gateway warnings and errors mentioning a deadlock, and
        ingress batches that failed and were applied one claim at a time; from the installed
        LogDigest (in-process gateways) or a `scan_logs` summary passed to `finish(log=…)`;
      * `claims_retried` / `claims_failed` / `claims_pending` — inbound claims whose processing
        failed at least once (`attempts > 0`), gave up, or were still pending at the end;
      * `outbox_retried` / `outbox_dead` / `outbox_unsent` — outbox rows claimed more than once
        (`attempts > 1`: a failed send, or a lease that ran out), given up, or still pending or
        sending at the end (a capped account's backlog, when the run stops before it drains).

    Counts over the whole run: setup and warm-up included (a deadlock there is one too)."""

    def __init__(self, url: str):
        self.url = url
        self._deadlocks0: int | None = None
        self._mark = None

    async def start(self) -> RunHealth:
        self._deadlocks0 = await pg_deadlocks(self.url)
        self._mark = _digest.mark() if _digest is not None else None
        return self

    async def finish(self, log: dict | None = None) -> dict:
        from gateway.db import make_engine
        from gateway.models import InboundClaim

        if log is None:
            log = _digest.summary(since=self._mark) if _digest is not None else {"deadlocks": 0, "records": []}
        engine = make_engine(self.url, pool_size=1)
        try:
            async with session_factory(engine)() as s:
                c, o = InboundClaim, Outbox
                claims = (await s.execute(select(
                    func.count().filter(c.attempts > 0), func.count().filter(c.status == "failed"),
                    func.count().filter(c.status == "pending")))).one()
                outbox = (await s.execute(select(
                    func.count().filter(o.attempts > 1), func.count().filter(o.status == "dead"),
                    func.count().filter(o.status.in_(("pending", "sending")))))).one()
        finally:
            await engine.dispose()
        deadlocks = None
        if self._deadlocks0 is not None:
            await pg_sessions_gone(self.url)
            deadlocks = await pg_deadlocks(self.url) - self._deadlocks0
        return {"pg_deadlocks": deadlocks, "log_deadlocks": log["deadlocks"],
                "batch_fallbacks": sum(r["count"] for r in log["records"] if BATCH_FALLBACK.search(r["message"])),
                "claims_retried": claims[0], "claims_failed": claims[1], "claims_pending": claims[2],
                "outbox_retried": outbox[0], "outbox_dead": outbox[1], "outbox_unsent": outbox[2]}


def health_cell(h: dict) -> str:
    """A table cell: deadlocks (PostgreSQL's count, or the log's on SQLite) / retries of any kind."""
    dl = h["pg_deadlocks"] if h["pg_deadlocks"] is not None else h["log_deadlocks"]
    return f"{dl} / {h['claims_retried'] + h['batch_fallbacks'] + h['outbox_retried']}"


def health_line(h: dict) -> str:
    pg = "" if h["pg_deadlocks"] is None else f"{h['pg_deadlocks']} in PostgreSQL's statistics, "
    return (f"deadlocks: {pg}{h['log_deadlocks']} in the gateway log; retries: "
            f"{h['claims_retried']} ingress claims retried ({h['claims_failed']} failed, {h['claims_pending']} "
            f"left pending), {h['batch_fallbacks']} batches applied one claim at a time, {h['outbox_retried']} "
            f"outbox rows retried ({h['outbox_dead']} dead, {h['outbox_unsent']} unsent at the end)")


async def make_world(gw) -> tuple[int, str]:
    """A store, a clerk, an invite (like tests.conftest.make_world). Returns (clerk id, invite code)."""
    clerk_id, _, invite = (await make_clerks(gw, 1))[0]
    return clerk_id, invite


async def make_clerks(gw, n: int, identity: Callable[[int], tuple[str, str, str]] | None = None
                      ) -> list[tuple[int, str, str]]:
    """One store and `n` clerks, each with an API token and an invite: [(clerk id, token, invite
    code)]. `identity(j)` = (platform, account, external id) of clerk j's work IM account when it is
    not the workbench."""
    from gateway.models import ClerkIdentity

    out = []
    async with session_factory(gw.engine)() as s:
        store = Store(name="静安店", city="上海")
        s.add(store)
        await s.flush()
        for j in range(n):
            clerk = Clerk(name=f"林小雨{j}" if j else "林小雨", display_name=f"小林{j}" if j else "小林",
                          store_id=store.id)
            s.add(clerk)
            await s.flush()
            if identity:
                platform_, account, external_id = identity(j)
                s.add(ClerkIdentity(clerk_id=clerk.id, platform=platform_, account=account, external_id=external_id))
            _, token = await create_token(s, "clerk", clerk_id=clerk.id)
            invite = await advisors.create_invite(s, clerk.id, source="counter")
            out.append((clerk.id, token, invite.code))
        await s.commit()
    return out


async def count_outbox(gw, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(Outbox).where(*where))).scalar()


async def outbox_idle(gw, *where, timeout: float = 30.0) -> None:
    """Wait until no outbox row (matching `where`, e.g. one account) is pending or being sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await count_outbox(gw, Outbox.status.in_(("pending", "sending")), *where):
            return
        await asyncio.sleep(0.05)
    raise BenchError("the outbox did not drain the setup messages")


# -- observing relays -------------------------------------------------------------------------------


class HubCounter:
    """Plays the open pages of the relay's receivers: subscribes to the gateway's hub for each
    (account, peer) key and stamps when each relayed message arrived. `pattern` finds (tag, seq)
    in a message's text; anything else (notices, welcomes) is counted in `other`."""

    def __init__(self, hub, keys: list[tuple[str, str]], pattern: re.Pattern):
        self.hub, self.keys, self.pattern = hub, keys, pattern
        self.arrived: dict[str, dict[int, float]] = {"m": {}, "w": {}}
        self.duplicates = 0
        self.other = 0
        self._queues = [(k, hub.subscribe(*k)) for k in keys]
        self._tasks = [asyncio.create_task(self._pump(q)) for _, q in self._queues]

    def seen(self, text: str, now: float) -> None:
        m = self.pattern.search(text or "")
        if not m:
            self.other += 1
            return
        got = self.arrived[m.group(1)]
        seq = int(m.group(2))
        if seq in got:
            self.duplicates += 1
            return
        got[seq] = now

    async def _pump(self, queue: asyncio.Queue) -> None:
        while True:
            item = await queue.get()
            self.seen(item.get("text") or "", time.perf_counter())

    async def wait(self, tag: str, n: int, timeout: float, where: str = "the receiver", *,
                   partial_ok: bool = False) -> bool:
        return await wait_arrivals(self.arrived[tag], n, timeout, where, partial_ok=partial_ok)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for k, q in self._queues:
            self.hub.unsubscribe(*k, q)


async def wait_arrivals(got: dict, n: int, timeout: float, where: str, stall: float = STALL,
                        alive: Callable[[], None] | None = None, partial_ok: bool = False) -> bool:
    """Wait until `got` holds n entries. Give up after `stall` s without a new one (a relay lost on
    the way never comes: no need to sit out the whole timeout) — an error; after `timeout` — an
    error too, unless `partial_ok` (fixed rate: a gateway that fell behind is still draining), then
    False is returned."""
    deadline = time.monotonic() + timeout
    last, last_at = len(got), time.monotonic()
    while len(got) < n:
        now = time.monotonic()
        if len(got) != last:
            last, last_at = len(got), now
        if now - last_at > stall:
            raise BenchError(f"only {len(got)} of {n} relays reached {where} (none for {stall:.0f} s)")
        if now > deadline:
            if partial_ok:
                return False
            raise BenchError(f"only {len(got)} of {n} relays reached {where} within {timeout:.0f} s")
        if alive is not None:
            alive()
        await asyncio.sleep(0.02)
    return True


def e2e_stats(load: Load, arrived: dict[int, float], n: int) -> Stats:
    """Per message: sent (or due) → relay arrived; rate: arrived / (first send → last arrival).
    A message whose relay has not arrived (a fixed-rate run cut off) counts as infinitely late."""
    lat = [(arrived[i] - load.sent_at[i]) * 1000 if i in arrived else math.inf for i in range(n)]
    return Stats(len(arrived), max(arrived.values()) - load.started, pct(lat, 50), pct(lat, 99), 0,
                 max(lat))


def open_loop_summary(load: Load, arrived: dict[int, float], rate: float, n: int) -> dict:
    """Did the gateway keep up with a fixed rate? Backlog when the last request was due, and how
    long it took after that until every ack and every relay was in."""
    end = load.window_end
    acks_late = sum(1 for t in load.done_at.values() if t > end)
    relays_late = sum(1 for t in arrived.values() if t > end)
    last_relay = max(arrived.values()) if arrived else end
    drain = max(0.0, max(last_relay, load.finished) - end)
    return {
        "offered_per_s": round(rate, 1),
        "sent_per_s": round(n / max(1e-9, load.last_start - load.started + 1 / rate), 1),
        "acked_per_s": round(len(load.done_at) / max(1e-9, load.finished - load.started), 1),
        "relayed_per_s": round(len(arrived) / max(1e-9, last_relay - load.started), 1),
        "unacked_at_window_end": acks_late + (n - len(load.done_at)),
        "unrelayed_at_window_end": relays_late + (n - len(arrived)),
        "drain_after_window_s": round(drain, 3),
        "not_relayed_at_cutoff": n - len(arrived),
        "generator_max_start_lag_ms": round(load.max_start_lag * 1000, 1),
        "kept_up": drain <= 1.0 and not load.errors and len(arrived) == n,
    }


def ingress_backlog(gw) -> int:
    """Acked claims waiting to be processed, whichever shape the ingress's work queue has."""
    ing = gw.ingress
    if isinstance(getattr(type(ing), "backlog", None), property):
        return ing.backlog
    work = getattr(ing, "_work", None)
    if isinstance(work, asyncio.Queue):
        return work.qsize()
    if isinstance(work, list | tuple):
        return sum(q.qsize() for q in work)
    return 0


class Backlog:
    """Samples how many acknowledged claims are waiting to be processed (the ingress work queue)."""

    def __init__(self, gw, every: float = 0.05):
        self.peak = 0
        self._task = asyncio.create_task(self._sample(gw, every))

    async def _sample(self, gw, every: float) -> None:
        while True:
            self.peak = max(self.peak, ingress_backlog(gw))
            await asyncio.sleep(every)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# -- `gateway serve` processes -----------------------------------------------------------------------

READY_TIMEOUT = 60.0


class Instance:
    """One `gateway serve` subprocess (`--workers N`: a supervisor and N workers on its one port);
    stdout/stderr go to a log file. `profile`: run it under cProfile (the supervisor only, when
    it has workers: they are processes of their own)."""

    def __init__(self, index: int, workdir: Path, profile: str | None = None, workers: int = 1):
        self.index, self.port, self.workers = index, free_port(), workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"instance-{index}-{uuid.uuid4().hex[:6]}.log"
        self.profile = profile if workers == 1 else None
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    async def start(self, config: Path) -> None:
        cmd = [sys.executable]
        if self.profile:
            cmd += ["-m", "cProfile", "-o", self.profile]
        cmd += ["-m", "gateway", "serve", "--config", str(config), "--port", str(self.port),
                "--workers", str(self.workers)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=self._log,
                                                         stderr=subprocess.STDOUT, env=env)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The processes that serve: this one, or its workers (not multiprocessing's helpers)."""
        if self.workers == 1:
            return [self.proc.pid]
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                    continue
                if b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                    out.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return sorted(out)

    def cpu_seconds(self) -> dict[int, float]:
        """user + system CPU time so far of each serving process (Linux /proc), by pid."""
        return {pid: cpu_of(pid) for pid in self.pids()}

    async def ready(self, http: aiohttp.ClientSession) -> None:
        """/readyz answered 200 — by every worker: each request on a new connection, which the
        kernel gives to any of them, until as many instance ids as workers have answered."""
        deadline = time.monotonic() + READY_TIMEOUT
        seen: set[str] = set()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise BenchError(f"instance {self.index} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with fresh.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            seen.add((await resp.json()).get("instance", ""))
                            if len(seen) >= self.workers:
                                return
                            continue
                except (aiohttp.ClientError, ValueError):
                    pass
                await asyncio.sleep(0.2)
        raise BenchError(f"instance {self.index}: {len(seen)} of {self.workers} workers ready within "
                         f"{READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise BenchError(f"instance {self.index} died with {self.proc.returncode}:\n{self.log_tail()}")

    async def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM (the graceful shutdown), then SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            pids = self.pids() if self.workers > 1 else []
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                for pid in [self.proc.pid, *pids]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


def cpu_of(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc); NaN when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine so far (Linux /proc/stat)."""
    try:
        nums = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = nums[3] + (nums[4] if len(nums) > 4 else 0)
        return float(sum(nums) - idle), float(sum(nums))
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


def scan_logs(paths: list[Path]) -> dict:
    """Warnings and errors in `gateway serve`'s JSON logs, summarised like LogDigest.summary()."""
    counts: dict[tuple[str, str, str], int] = {}
    deadlocks = 0
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if '"level"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") not in ("warning", "error", "critical"):
                continue
            key = (rec.get("logger", ""), rec["level"].upper(), re.sub(r"\d+", "N", str(rec.get("event", "")))[:120])
            counts[key] = counts.get(key, 0) + 1
            deadlocks += "deadlock" in line.lower()
    return {"deadlocks": deadlocks,
            "records": [{"logger": n, "level": lv, "message": m, "count": c}
                        for (n, lv, m), c in sorted(counts.items(), key=lambda kv: -kv[1])]}


def write_serve_config(path: Path, url: str, accounts: list[dict], workers: int = 1, **sections) -> None:
    """A `gateway serve` config: the database, JSON logs, `server.workers`, the benchmarks' policies."""
    import yaml

    path.write_text(yaml.safe_dump({
        "database": {"url": url},
        "server": {"host": "127.0.0.1", "first_run_seed": False, "log_format": "json", "workers": workers},
        "policies": BENCH_POLICIES,
        "accounts": accounts,
        **sections,
    }, allow_unicode=True))


# -- report -----------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


async def postgres_version() -> str:
    try:
        import asyncpg

        conn = await asyncpg.connect(pg_dsn(pg_admin_url()), timeout=5)
        try:
            return (await conn.fetchval("SHOW server_version")).split()[0]
        finally:
            await conn.close()
    except Exception as e:  # noqa: BLE001 - only reported
        return f"unreachable ({type(e).__name__})"


async def machine() -> dict:
    import sqlalchemy

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": await postgres_version(),
        "aiohttp": aiohttp.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "commit": git_commit(),
    }


def machine_line(m: dict) -> str:
    return (f"machine: {m['cpus']} CPUs, Python {m['python']}, SQLite {m['sqlite']}, PostgreSQL {m['postgres']}, "
            f"{m['platform']}; aiohttp {m['aiohttp']}, SQLAlchemy {m['sqlalchemy']}; commit {m['commit']}")


def fmt_table(headers: list[str], rows: list[list], left: int = 1) -> str:
    """A plain text table: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    out = []
    for row in [headers, *rows]:
        cells = [f"{c!s:<{w}}" if i < left else f"{c!s:>{w}}" for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def ms(v: float | str | None) -> str:
    """Milliseconds for a table cell: blank when unknown, "cut off" when the message never arrived."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "cut off"
    return f"{v:.1f}"


class LogDigest(logging.Handler):
    """Warnings and errors of the gateway under test: the first of each kind is printed whole
    (stderr), the repeats are only counted, and `summary()` lists the counts — a storm of
    identical tracebacks neither floods the output nor goes unnoticed. Records whose message or
    traceback mentions a deadlock are counted apart. `mark()` and `summary(since=mark)`: the
    records of one run when a process runs several."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: dict[tuple[str, str, str], int] = {}
        self.deadlocks = 0
        self._out = logging.StreamHandler(sys.stderr)
        self._out.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, record.levelname, re.sub(r"\d+", "N", str(record.msg))[:120])
        self.counts[key] = self.counts.get(key, 0) + 1
        exc = "".join(map(str, record.exc_info[1:2])) if record.exc_info else ""
        if "deadlock" in f"{record.getMessage()} {exc}".lower():
            self.deadlocks += 1
        if self.counts[key] == 1:
            self._out.handle(record)

    def mark(self) -> tuple[dict, int]:
        return dict(self.counts), self.deadlocks

    def summary(self, since: tuple[dict, int] | None = None) -> dict:
        counts, deadlocks = self.counts, self.deadlocks
        if since is not None:
            counts = {k: c - since[0].get(k, 0) for k, c in counts.items() if c > since[0].get(k, 0)}
            deadlocks -= since[1]
        return {"deadlocks": deadlocks,
                "records": [{"logger": n, "level": lv, "message": m, "count": c}
                            for (n, lv, m), c in sorted(counts.items(), key=lambda kv: -kv[1])]}

    def lines(self) -> list[str]:
        return log_lines(self.summary())


def log_lines(summary: dict) -> list[str]:
    """A LogDigest summary as report lines (none when the log was clean)."""
    out = [f"  {r['count']:>6} × {r['level']} {r['logger']}: {r['message']}" for r in summary["records"]]
    if out:
        out.insert(0, f"gateway log during the run (warnings and errors; {summary['deadlocks']} with a deadlock):")
    return out


_digest: LogDigest | None = None  # the one quiet_logging() installed


def quiet_logging() -> LogDigest:
    """Quiet the libraries; route warnings and errors through a LogDigest (returned)."""
    global _digest
    digest = _digest = LogDigest()
    root = logging.getLogger()
    root.handlers[:] = [digest]
    root.setLevel(logging.WARNING)
    for name in ("gateway", "sqlalchemy", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.ERROR)
    return digest


class Profile:
    """cProfile around the measured part; `top()` is the text of the top functions by cumulative time."""

    def __init__(self, path: str | None):
        self.path = path
        self._p = None

    def __enter__(self) -> Profile:
        if self.path:
            import cProfile

            self._p = cProfile.Profile()
            self._p.enable()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.disable()
            self._p.dump_stats(self.path)

    def top(self, n: int = 25) -> str:
        return top_functions(self.path, n) if self._p is not None else ""


def top_functions(path: str, n: int = 25) -> str:
    """The top functions by cumulative time, then by own time. Under asyncio and SQLAlchemy's
    greenlets cumulative times overlap and can exceed the wall time; own time (tottime) adds up."""
    import io
    import pstats

    out = []
    for key, title in (("cumulative", "by cumulative time"), ("tottime", "by own time")):
        buf = io.StringIO()
        pstats.Stats(path, stream=buf).strip_dirs().sort_stats(key).print_stats(n)
        text = buf.getvalue()
        start = text.find("   ncalls")
        out.append(f"[{title}]\n" + (text[start:].rstrip() if start >= 0 else text.rstrip()))
    return "\n\n".join(out)
