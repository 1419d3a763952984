"""What the faults share: a database of their own, seeding, real `gateway serve` processes, a
listener that sees every webchat send on the wire, and counting from the database.

Counting never trusts the gateway's own counters: it reads the rows (outbox, messages,
deliveries, runs) and, where it can, what reached the "platform".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml

from bench.campaign import seed as bench_seed  # set-based: N customers with webchat identities, 50 clerks
from gateway.db import make_engine, session_factory, upgrade
from gateway.models import Campaign, metadata

PG_ADMIN = os.environ.get("TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
WEBCHAT_SECRET = "chaos-webchat-secret-0123456789"
HOST = socket.gethostname()  # instance ids are "<host>:<pid>"; leases are claimed by "<host>:<pid>:…"
# What a connection to a restarting server raises: retry those, fail on anything else.
PG_DOWN = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
           asyncpg.exceptions.OperatorInterventionError)


def say(line: str) -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


class Database:
    """A PostgreSQL database for the run: migrated once, emptied before each trial."""

    def __init__(self, url: str, *, admin_url: str | None = None):
        self.url, self.dsn, self.admin_url = url, to_dsn(url), admin_url  # admin_url set: we created it
        self._conn: asyncpg.Connection | None = None

    @classmethod
    async def create(cls, admin_url: str = PG_ADMIN) -> Database:
        name = f"gw_chaos_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(to_dsn(admin_url), timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        db = cls(admin_url.rsplit("/", 1)[0] + f"/{name}", admin_url=admin_url)
        await upgrade(db.url)
        return db

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*PG_DOWN):
                await self._conn.close(timeout=2)
            self._conn = None

    async def drop(self) -> None:
        await self.close()
        if self.admin_url:
            conn = await asyncpg.connect(to_dsn(self.admin_url), timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.url.rsplit("/", 1)[1]}" WITH (FORCE)')
            finally:
                await conn.close()

    async def q(self, sql: str, *args, patience: float = 120.0) -> list[asyncpg.Record]:
        """Run a query, reconnecting while the server restarts (pg_restart polls through it)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.dsn, timeout=5)
                return await self._conn.fetch(sql, *args)
            except PG_DOWN:
                await self.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def val(self, sql: str, *args) -> Any:
        rows = await self.q(sql, *args)
        return rows[0][0] if rows else None

    async def reset(self) -> None:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        await self.q(f"TRUNCATE {names} RESTART IDENTITY CASCADE")  # bench's seed expects store id 1


async def seed(db: Database, customers: int) -> None:
    """bench/campaign.py's seed (store 1, clerks 1..50, customer i bound to clerk 1 + i % 50, webchat
    identity u-<i>), plus consent: every customer is an eligible member."""
    await bench_seed(db.dsn, customers)
    await db.q("UPDATE customer SET consent_at = now(), consent_version = 'v1'")


async def create_campaign(db: Database, text: str) -> int:
    """A direct campaign to everyone, due now (the domain's own rows, as the admin API writes them)."""
    engine = make_engine(db.url)
    try:
        async with session_factory(engine)() as s:
            now = datetime.now(UTC)
            c = Campaign(name=f"chaos {text[:40]}", kind="notice", content={"text": text}, audience={},
                         sender="advisor", schedule={"at": now.isoformat()}, holdout_pct=0, mode="direct",
                         status="scheduled", next_run_at=now, created_at=now)
            s.add(c)
            await s.commit()
            return c.id
    finally:
        await engine.dispose()


def gateway_config(url: str, port: int, *, accounts: list[dict] | None = None, **sections: dict) -> dict:
    """A config for a chaos gateway: quick ticks and no policy that would hold pushes back."""
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "first_run_seed": False, "shutdown_grace": 3, "workers": 1,
                   "log_format": "json", "access_log": False},
        "database": {"url": url, "pool_size": 10},
        "policies": {"quiet_hours": None, "max_pushes": {"per_week": 1000}, "remind_after_minutes": None,
                     "escalate_after_minutes": None, "customer_messages_per_minute": None},
        "campaigns": {"tick_seconds": 0.5, "batch": 1000},  # smaller batches: more points to die between
        "outbox": {"concurrency": 128, "batch": 200, "poll_interval": 0.1},
        "ingress": {"replay_after_seconds": 5},
        "accounts": [{"name": "workbench", "platform": "workbench"},
                     {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET, "rate_per_sec": 2000},
                     *(accounts or [])],
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


class GatewayProc:
    """One real `python -m gateway serve` process (restartable on the same port)."""

    def __init__(self, name: str, cfg: dict, logdir: Path):
        self.name, self.port = name, cfg["server"]["port"]
        self.config_path, self.log_path = logdir / f"{name}.yaml", logdir / f"{name}.log"
        self.config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        self.proc: asyncio.subprocess.Process | None = None
        self.pids: list[int] = []  # every process this name had: their leases may need expiring
        self.unexpected_exits: list[int] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, *, ready: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}  # the file alone decides
        with self._log() as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
                cwd=self.config_path.parent, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
        self.pids.append(self.proc.pid)
        if ready:
            await self.wait_ready()

    def _log(self):
        return open(self.log_path, "ab")  # the child process keeps its own copy of the descriptor

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{self.base}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    async def role(self) -> str | None:
        """leader | standby (the scheduler), None when it does not answer."""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                async with http.get(f"{self.base}/readyz") as r:
                    return (await r.json())["checks"]["scheduler"]
        return None

    async def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def check(self) -> bool:
        """False (and noted) when the process died without being killed: a crash is a finding."""
        if self.proc is not None and self.proc.returncode is not None:
            self.unexpected_exits.append(self.proc.returncode)
            self.proc = None
            return False
        return True

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for the drain; SIGKILL if it hangs. Returns the exit code."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


async def expire_leases(db: Database, pid: int) -> int:
    """After a kill -9, move the clock forward for the dead process only: its run and outbox leases
    end now, as they would after `campaigns.lease_seconds` (60 s) and `outbox.lease_seconds`. The live
    gateways then take them over through their own code paths."""
    like = f"{HOST}:{pid}:%"
    runs = await db.q("UPDATE campaign_run SET lease_until = now() - interval '1 second' "
                      "WHERE status = 'materializing' AND claimed_by LIKE $1 RETURNING id", like)
    rows = await db.q("UPDATE outbox SET lease_until = now() - interval '1 second' "
                      "WHERE status = 'sending' AND claimed_by LIKE $1 RETURNING id", like)
    return len(runs) + len(rows)


class WireObserver:
    """LISTENs where PgHub publishes each webchat send (channel gw_hub): what left the gateway
    towards customers' pages, by customer, by message id. A kill between send and bookkeeping
    shows up here as the same message id published twice (pages dedupe by id)."""

    CHANNEL = "gw_hub"

    def __init__(self) -> None:
        self.marker: str | None = None
        self.seen: dict[str, Counter] = defaultdict(Counter)  # external id -> message id -> times
        self._parts: dict[tuple[str, str], list[str]] = {}
        self._conn: asyncpg.Connection | None = None

    async def start(self, dsn: str) -> None:
        self._conn = await asyncpg.connect(dsn)
        await self._conn.add_listener(self.CHANNEL, self._on)

    async def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*PG_DOWN):
                await self._conn.close(timeout=2)

    def watch(self, marker: str) -> None:
        self.marker, self.seen = marker, defaultdict(Counter)

    async def settle(self, quiet: float = 0.5, longest: float = 5.0) -> None:
        """Notifications trail the sends (one NOTIFY per message): wait until they stop coming."""
        deadline = time.monotonic() + longest
        last = -1
        while time.monotonic() < deadline and (now := sum(sum(c.values()) for c in self.seen.values())) != last:
            last = now
            await asyncio.sleep(quiet)

    def _on(self, _conn, _pid, _channel, data: str) -> None:
        head, _, part = data.partition("\n")
        origin, seq, _i, count = head.split(" ")
        parts = self._parts.setdefault((origin, seq), [])
        parts.append(part)
        if len(parts) < int(count):
            return
        del self._parts[(origin, seq)]
        _account, external_id, item = json.loads("".join(parts))
        if self.marker and self.marker in (item.get("text") or ""):
            self.seen[external_id][item.get("id")] += 1


async def count_campaign(db: Database, campaign_id: int, marker: str, expected: int,
                         wire: dict[str, Counter] | None = None) -> dict:
    """Per customer: push outbox rows, their messages, deliveries (over every run of the campaign)
    and, if observed, distinct messages on the wire. More than one of any is a duplicate."""
    rows = await db.q("""
        WITH ob AS (SELECT customer_id, count(*) AS n, count(*) FILTER (WHERE status = 'sent') AS sent
                    FROM outbox WHERE campaign_id = $1 AND kind = 'push' GROUP BY customer_id),
             msg AS (SELECT customer_id, count(*) AS n FROM message
                     WHERE direction = 'out' AND side = 'customer' AND strpos(text, $2) > 0 GROUP BY customer_id),
             dl AS (SELECT d.customer_id, count(*) AS n FROM delivery d JOIN campaign_run r ON r.id = d.run_id
                    WHERE r.campaign_id = $1 GROUP BY d.customer_id)
        SELECT c.id, coalesce(ob.n, 0) AS ob, coalesce(ob.sent, 0) AS sent, coalesce(msg.n, 0) AS msg,
               coalesce(dl.n, 0) AS dl
        FROM customer c LEFT JOIN ob ON ob.customer_id = c.id LEFT JOIN msg ON msg.customer_id = c.id
        LEFT JOIN dl ON dl.customer_id = c.id""", campaign_id, marker)
    wire = wire or {}
    delivered = duplicates = 0
    for r in rows:
        on_wire = len(wire.get(f"u-{r['id']}", ()))
        duplicates += max(0, max(r["ob"], r["msg"], r["dl"], on_wire) - 1)
        delivered += r["sent"] >= 1
    runs = await db.q("SELECT status, counts FROM campaign_run WHERE campaign_id = $1", campaign_id)
    # Half-written: an outbox row recorded sent whose message row never learnt it.
    torn = await db.val("""SELECT count(*) FROM outbox o JOIN message m ON m.id = o.message_id
                           WHERE o.campaign_id = $1 AND o.status = 'sent' AND m.status NOT IN ('sent', 'delivered')""",
                        campaign_id)
    resent = sum(n - 1 for ids in wire.values() for n in ids.values() if n > 1)
    problems = []
    if len(runs) != 1 or runs[0]["status"] != "done":
        problems.append(f"runs: {[r['status'] for r in runs]}")
    if torn:
        problems.append(f"{torn} outbox rows sent with their message not marked sent")
    return {"expected": expected, "delivered": delivered, "duplicates": duplicates,
            "lost": expected - delivered, "resent": resent, "problems": problems}


async def campaign_state(db: Database, campaign_id: int) -> dict:
    r = (await db.q("""
        SELECT (SELECT coalesce(max((counts->>'audience')::int), 0) FROM campaign_run WHERE campaign_id = $1) AS mat,
               (SELECT count(*) FROM outbox WHERE campaign_id = $1 AND status = 'sent') AS sent,
               (SELECT count(*) FROM campaign_run WHERE campaign_id = $1) AS runs,
               (SELECT count(*) FROM campaign_run WHERE campaign_id = $1 AND status <> 'done') AS open_runs,
               (SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')) AS open_sends,
               (SELECT count(*) FROM inbound_claim WHERE status = 'pending') AS open_claims""", campaign_id))[0]
    return dict(r)


def finished(state: dict) -> bool:
    return state["runs"] >= 1 and not state["open_runs"] and not state["open_sends"] and not state["open_claims"]


def phase(state: dict, customers: int) -> str:
    """Where the run was: materialising (sends already run alongside) or only dispatching."""
    if state["mat"] < customers:
        return f"materialising {state['mat'] / customers:.0%} (sent {state['sent'] / customers:.0%})"
    return f"dispatching {state['sent'] / customers:.0%}"


@dataclass
class Result:
    """One fault's line. ok: no duplicate, nothing lost and no other problem."""

    fault: str
    trials: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, counts: dict) -> None:
        self.trials += 1
        for k in ("expected", "delivered", "duplicates", "lost"):
            setattr(self, k, getattr(self, k) + counts[k])

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.problems)

    HEADER = "fault           | trials run | deliveries expected | delivered | duplicates | lost | more"

    def line(self) -> str:
        more = " ".join(f"{k}={v}" for k, v in self.extra.items())
        if self.problems:
            more += f" PROBLEMS={len(self.problems)}"
        return (f"{self.fault:<15} | {self.trials:>10} | {self.expected:>19} | {self.delivered:>9} | "
                f"{self.duplicates:>10} | {self.lost:>4} | {more}")
