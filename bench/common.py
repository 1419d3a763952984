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
import logging
import math
import os
import platform
import re
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
    identical tracebacks neither floods the output nor goes unnoticed. Tracebacks that mention
    a deadlock are counted apart."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: dict[tuple[str, str, str], int] = {}
        self.deadlocks = 0
        self._out = logging.StreamHandler(sys.stderr)
        self._out.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, record.levelname, re.sub(r"\d+", "N", str(record.msg))[:120])
        self.counts[key] = self.counts.get(key, 0) + 1
        if record.exc_info and "deadlock" in "".join(map(str, record.exc_info[1:2])).lower():
            self.deadlocks += 1
        if self.counts[key] == 1:
            self._out.handle(record)

    def summary(self) -> dict:
        return {"deadlocks": self.deadlocks,
                "records": [{"logger": n, "level": lv, "message": m, "count": c}
                            for (n, lv, m), c in sorted(self.counts.items(), key=lambda kv: -kv[1])]}

    def lines(self) -> list[str]:
        return log_lines(self.summary())


def log_lines(summary: dict) -> list[str]:
    """A LogDigest summary as report lines (none when the log was clean)."""
    out = [f"  {r['count']:>6} × {r['level']} {r['logger']}: {r['message']}" for r in summary["records"]]
    if out:
        out.insert(0, f"gateway log during the run (warnings and errors; {summary['deadlocks']} with a deadlock):")
    return out


def quiet_logging() -> LogDigest:
    """Quiet the libraries; route warnings and errors through a LogDigest (returned)."""
    digest = LogDigest()
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
