"""Benchmark: webchat inbound → persisted → relayed to the workbench.

Two servers in this one process, driven by the same load generator (one aiohttp.ClientSession,
TCPConnector(limit=C), C workers posting N messages in all, latency = perf_counter around each POST):

  * baseline — a bare aiohttp app whose only handler reads the JSON body and answers 202;
  * gateway  — an in-process gateway on a temporary SQLite (or a fresh PostgreSQL database with
    `--db postgres`), one store, one clerk with the workbench open (a hub subscription), and K
    customers logged in through the brand's signed session and bound through an invite.

For the gateway two things are measured: the ack of the POST (claim persisted, 202 returned), and
end to end: from the first POST until the relay `【name #n】m<seq> …` of every message has been
published to the clerk's workbench by the outbox. Per message end-to-end latency is send → relayed.

    .venv/bin/python bench/ingress.py [--messages N] [--concurrency C] [--customers K]
                                      [--db sqlite|postgres] [--json] [--profile FILE]

The aim (from the issue): end-to-end msgs/s ≥ 25 % of the bare handler's msgs/s. Missing the aim
is reported, not an error; the exit code is non-zero only when something failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from adapters.webchat.simulator import BrandApp  # noqa: E402
from gateway import advisors  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import build_config  # noqa: E402
from gateway.db import session_factory, upgrade  # noqa: E402
from gateway.models import Clerk, Outbox, Store  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from gateway.serve import SWITCH_INTERVAL  # noqa: E402
from gateway.tokens import create_token  # noqa: E402

AIM = 0.25
WARMUP = 200
BASELINE_ROUNDS = 3
E2E_TIMEOUT = 120.0
PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TEXT = "这款包有红色吗？周末想去店里看看"
_SEQ = re.compile(r"】([mw])(\d+) ")


class BenchError(Exception):
    pass


@dataclass
class Stats:
    n: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return {**d, "msgs_per_s": round(self.rate, 1)}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Load:
    """What one load run saw: per request latency, start/end times and failures."""

    started: float = 0.0
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def stats(self) -> Stats:
        lat = [x * 1000 for x in self.latencies]
        return Stats(len(self.latencies), self.finished - self.started, _pct(lat, 50), _pct(lat, 99),
                     len(self.errors))


async def drive(http: aiohttp.ClientSession, request_for, n: int, concurrency: int, *, tag: str = "m") -> Load:
    """C workers share a counter and post N messages in all; `request_for(seq, tag)` → (url, headers, body)."""
    load = Load()
    counter = iter(range(n))

    async def worker() -> None:
        for seq in counter:
            url, headers, body = request_for(seq, tag)
            t0 = time.perf_counter()
            load.sent_at[seq] = t0
            try:
                async with http.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as e:
                load.errors.append(f"{type(e).__name__}: {e}")
                continue
            load.latencies.append(time.perf_counter() - t0)
            if status != 202:
                load.errors.append(f"HTTP {status}")

    load.started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.finished = time.perf_counter()
    return load


def message_body(seq: int, tag: str) -> dict:
    return {"text": f"{tag}{seq} {TEXT}", "client_msg_id": f"{tag}-{seq}-{uuid.uuid4().hex[:12]}"}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


# -- baseline -------------------------------------------------------------------------------------


async def bare_handler(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"client_msg_id": body.get("client_msg_id"), "duplicate": False,
                              "status": "accepted"}, status=202)


async def run_baseline(args) -> Stats:
    app = web.Application()
    app.router.add_post("/webchat/x/messages", bare_handler)
    runner, server = await serve(app)
    url = f"{server}/webchat/x/messages"
    headers = {"Authorization": "Bearer " + "x" * 120}  # about the size of a webchat session token

    def request_for(seq: int, tag: str):
        return url, headers, message_body(seq, tag)

    rounds: list[Stats] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
            await drive(http, request_for, WARMUP, args.concurrency, tag="w")
            for _ in range(BASELINE_ROUNDS):  # a round takes well under a second: take the median of a few
                load = await drive(http, request_for, args.messages, args.concurrency)
                if load.errors:
                    raise BenchError(f"baseline: {len(load.errors)} failed requests, first: {load.errors[0]}")
                rounds.append(load.stats())
    finally:
        await runner.cleanup()
    return sorted(rounds, key=lambda st: st.rate)[len(rounds) // 2]


# -- gateway --------------------------------------------------------------------------------------


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


class Database:
    """A temporary SQLite file, or a fresh PostgreSQL database dropped at the end."""

    def __init__(self, kind: str):
        self.kind = kind
        self.url = ""
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._pg_name: str | None = None
        self._pg_admin = os.environ.get("TEST_PG_URL", PG_DEFAULT)

    async def _pg(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(_pg_dsn(self._pg_admin), timeout=10)
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


async def make_world(gw: Gateway) -> tuple[int, str]:
    """A store, a clerk, an invite (like tests.conftest.make_world). Returns (clerk id, invite code)."""
    async with session_factory(gw.engine)() as s:
        store = Store(name="静安店", city="上海")
        s.add(store)
        await s.flush()
        clerk = Clerk(name="林小雨", display_name="小林", store_id=store.id)
        s.add(clerk)
        await s.flush()
        await create_token(s, "clerk", clerk_id=clerk.id)
        invite = await advisors.create_invite(s, clerk.id, source="counter")
        await s.commit()
        return clerk.id, invite.code


async def outbox_idle(gw: Gateway, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with gw.db() as s:
            busy = (await s.execute(select(func.count()).select_from(Outbox)
                                    .where(Outbox.status.in_(("pending", "sending"))))).scalar()
        if not busy:
            return
        await asyncio.sleep(0.05)
    raise BenchError("the outbox did not drain the setup messages")


class RelayCounter:
    """Plays the clerk's open workbench: counts relays on the hub and stamps when each arrived."""

    def __init__(self, gw: Gateway, clerk_id: int):
        self.gw, self.key = gw, ("workbench", str(clerk_id))
        self.queue = gw.hub().subscribe(*self.key)
        self.arrived: dict[str, dict[int, float]] = {"m": {}, "w": {}}
        self.other = 0
        self._events: dict[str, tuple[int, asyncio.Event]] = {}
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            item = await self.queue.get()
            now = time.perf_counter()
            m = _SEQ.search(item.get("text") or "")
            if not m or not item["text"].startswith("【"):
                self.other += 1
                continue
            got = self.arrived[m.group(1)]
            got.setdefault(int(m.group(2)), now)
            want = self._events.get(m.group(1))
            if want and len(got) >= want[0]:
                want[1].set()

    async def wait(self, tag: str, n: int, timeout: float) -> None:
        ev = asyncio.Event()
        self._events[tag] = (n, ev)
        if len(self.arrived[tag]) >= n:
            return
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            raise BenchError(f"only {len(self.arrived[tag])} of {n} relays reached the workbench "
                             f"within {timeout:.0f} s") from None

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.gw.hub().unsubscribe(*self.key, self.queue)


class Backlog:
    """Samples how many acknowledged claims are waiting to be processed (the ingress work queue)."""

    def __init__(self, gw: Gateway, every: float = 0.05):
        self.peak = 0
        self._task = asyncio.create_task(self._sample(gw, every))

    async def _sample(self, gw: Gateway, every: float) -> None:
        while True:
            self.peak = max(self.peak, gw.ingress._work.qsize())
            await asyncio.sleep(every)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def run_gateway(args, url: str) -> dict:
    secret = secrets.token_hex(16)
    cfg = build_config({
        "database": {"url": url},
        "server": {"first_run_seed": False},
        "accounts": [{"name": "workbench", "platform": "workbench"},
                     {"name": "webchat", "platform": "webchat", "secret": secret}],
    }, env={})
    gw = Gateway(cfg)
    await gw.start()
    runner, server = await serve(create_app(gw, manage_lifecycle=False))
    cfg.server.public_url = server
    relays: RelayCounter | None = None
    try:
        clerk_id, invite = await make_world(gw)
        relays = RelayCounter(gw, clerk_id)
        async with aiohttp.ClientSession() as setup:
            brand = BrandApp(setup, server, "webchat", secret)
            customers = []
            for i in range(args.customers):
                c = await brand.login(f"bench-{i}", f"顾客{i:03d}")
                status, body = await c.bind(invite)
                if status != 200:
                    raise BenchError(f"bind of customer {i} failed: {status} {body}")
                customers.append(c)
        await outbox_idle(gw)
        msg_url = f"{server}/webchat/webchat/messages"
        headers = [c.headers for c in customers]

        def request_for(seq: int, tag: str):
            return msg_url, headers[seq % len(headers)], message_body(seq, tag)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
            warm = await drive(http, request_for, WARMUP, args.concurrency, tag="w")
            if warm.errors:
                raise BenchError(f"gateway warm-up: {len(warm.errors)} failed, first: {warm.errors[0]}")
            await relays.wait("w", WARMUP, E2E_TIMEOUT)
            await outbox_idle(gw)

            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            backlog = Backlog(gw)
            load = await drive(http, request_for, args.messages, args.concurrency)
            relayed_at_last_ack = len(relays.arrived["m"])
            await backlog.close()
            if load.errors:
                raise BenchError(f"gateway: {len(load.errors)} failed requests, first: {load.errors[0]}")
            await relays.wait("m", args.messages, E2E_TIMEOUT)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)

        await outbox_idle(gw)  # the relays are out; let the outbox record them before checking
        drained = time.perf_counter() - load.started
        arrived = relays.arrived["m"]
        e2e_lat = [(arrived[i] - load.sent_at[i]) * 1000 for i in range(args.messages)]
        e2e = Stats(args.messages, max(arrived.values()) - load.started, _pct(e2e_lat, 50), _pct(e2e_lat, 99))
        async with gw.db() as s:
            sent = (await s.execute(select(func.count()).select_from(Outbox)
                                    .where(Outbox.kind == "relay", Outbox.status == "sent"))).scalar()
        if sent != args.messages + WARMUP:
            raise BenchError(f"outbox shows {sent} relays sent, expected {args.messages + WARMUP}")
        return {"ack": load.stats(), "e2e": e2e, "drained_s": round(drained, 2), "peak_backlog": backlog.peak,
                "relayed_at_last_ack": relayed_at_last_ack,
                "limiter_wait_s": round(sum(b.waited for b in gw.outbox._limiters.values()), 3)}
    finally:
        if relays is not None:
            await relays.close()
        await runner.cleanup()
        await gw.stop()


# -- report ---------------------------------------------------------------------------------------


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import sqlalchemy

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "commit": commit,
    }


def table(result: dict) -> str:
    base, ack, e2e = result["baseline"], result["gateway_ack"], result["gateway_e2e"]
    rows = [
        (f"bare aiohttp handler (median of {BASELINE_ROUNDS})", base, None),
        (f"gateway ack (POST → 202, {result['db']})", ack, result["ack_ratio"]),
        (f"gateway end to end ({result['db']})", e2e, result["e2e_ratio"]),
    ]
    lines = [f"{'':<36} {'msgs/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'vs bare':>8}"]
    for name, st, r in rows:
        ratio = "" if r is None else f"{r * 100:.1f} %"
        lines.append(f"{name:<36} {st['msgs_per_s']:>9.1f} {st['p50_ms']:>9.2f} {st['p99_ms']:>9.2f} {ratio:>8}")
    return "\n".join(lines)


async def main_async(args) -> dict:
    base = await run_baseline(args)
    async with Database(args.db) as url:
        gw = await run_gateway(args, url)
    ack_ratio = gw["ack"].rate / base.rate
    e2e_ratio = gw["e2e"].rate / base.rate
    return {
        "db": args.db,
        "messages": args.messages,
        "concurrency": args.concurrency,
        "customers": args.customers,
        "machine": machine(),
        "baseline": base.as_dict(),
        "gateway_ack": gw["ack"].as_dict(),
        "gateway_e2e": gw["e2e"].as_dict(),
        "ack_ratio": round(ack_ratio, 4),
        "e2e_ratio": round(e2e_ratio, 4),
        "outbox_rate_limiter_wait_s": gw["limiter_wait_s"],
        "outbox_drained_s": gw["drained_s"],
        "peak_ingress_backlog": gw["peak_backlog"],
        "relayed_when_last_post_acked": gw["relayed_at_last_ack"],
        "aim": AIM,
        "aim_met": e2e_ratio >= AIM,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000, help="messages per measured run (default 3000)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent client workers (default 50)")
    p.add_argument("--customers", type=int, default=50, help="bound customers the messages are spread over")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--profile", metavar="FILE", help="cProfile the measured gateway run into FILE (pstats)")
    args = p.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.customers < 1:
        p.error("--messages, --concurrency and --customers must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("aiohttp.access", "gateway", "sqlalchemy", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        sys.setswitchinterval(SWITCH_INTERVAL)  # as `gateway serve` does
        result = asyncio.run(main_async(args))
    except BenchError as e:
        print(f"BENCH FAILED: {e}", file=sys.stderr)
        return 1
    result["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    m = result["machine"]
    print(f"Advisor Gateway ingress benchmark — {args.messages} messages, concurrency {args.concurrency}, "
          f"{args.customers} customers, {args.db}")
    print(f"machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; aiohttp {m['aiohttp']}, "
          f"SQLAlchemy {m['sqlalchemy']}; commit {m['commit']}\n")
    print(table(result))
    print(f"\nwhile posting: peak {result['peak_ingress_backlog']} acknowledged messages waiting to be processed; "
          f"{result['relayed_when_last_post_acked']} of {args.messages} relayed when the last POST was acknowledged")
    print(f"outbox: every row recorded as sent {result['outbox_drained_s']} s after the first POST; "
          f"its rate limiter waited {result['outbox_rate_limiter_wait_s']} s in total")
    verdict = "MET" if result["aim_met"] else "NOT MET"
    print(f"aim (end to end ≥ {AIM:.0%} of the bare handler): {verdict} — "
          f"{result['e2e_ratio'] * 100:.1f} % (ack {result['ack_ratio'] * 100:.1f} %)")
    print(f"wall time {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
