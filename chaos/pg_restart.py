"""pg_restart: PostgreSQL restarts under a running campaign and live inbound traffic.

One gateway serves a campaign to N customers while 40 customers keep writing to their clerks
(webchat → workbench relays). PostgreSQL is restarted twice: once while the run materialises and
once while it dispatches (`pg_ctlcluster … restart`, needs root). The gateway is never restarted:
it must recover by itself. The chaos client behaves like a real app: a message refused (non-2xx) or
cut off is sent again with the same client_msg_id until it is accepted.

Counted: each push once (outbox rows, messages, deliveries per customer), and each inbound message
stored once (by client_msg_id) and relayed to its clerk once. Other engineers' tests share this
server, so the restarts are kept short and the server is always waited for (pg_isready) after.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from adapters.webchat.simulator import BrandApp
from chaos.common import (
    WEBCHAT_SECRET,
    Database,
    GatewayProc,
    Result,
    campaign_state,
    count_campaign,
    create_campaign,
    finished,
    free_port,
    gateway_config,
    phase,
    say,
    seed,
)

WRITERS = 40  # customers writing during the run


async def pg_ready(timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = await asyncio.create_subprocess_exec("pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432")
        if await p.wait() == 0:
            return True
        await asyncio.sleep(0.2)
    return False


async def restart_pg() -> float:
    """Restart the local cluster; returns the seconds until it accepts connections again."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    t0 = time.monotonic()
    p = await asyncio.create_subprocess_exec("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart",
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    if not await pg_ready():  # never leave the shared server down
        await (await asyncio.create_subprocess_exec("pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                                                    "start")).wait()
        if not await pg_ready():
            raise RuntimeError(f"PostgreSQL did not come back: {out.decode(errors='replace')}")
    if p.returncode:
        raise RuntimeError(f"pg_ctlcluster restart failed ({p.returncode}): {out.decode(errors='replace')}")
    return time.monotonic() - t0


def can_restart() -> str | None:
    if os.geteuid() != 0:
        return "pg_restart needs root (pg_ctlcluster)"
    if not shutil.which("pg_ctlcluster") or not os.path.isdir("/etc/postgresql"):
        return "pg_ctlcluster or /etc/postgresql not found"
    return None


class Writers:
    """Customers writing to their clerks, retrying refused messages with the same client_msg_id."""

    def __init__(self, brand: BrandApp, marker: str):
        self.brand, self.marker = brand, marker
        self.sent: dict[str, dict] = {}  # client_msg_id -> {"text", "acked_at", "tries"}
        self.refusals: Counter = Counter()  # "503 unavailable", "connection", ...
        self.stop = asyncio.Event()
        self._seq = 0

    async def one(self, customer_id: int, rng: random.Random) -> None:
        client = await self.brand.login(f"u-{customer_id}")
        while not self.stop.is_set():
            self._seq += 1
            cmid, text = uuid.uuid4().hex, f"{self.marker}-in{self._seq}"
            rec = self.sent[cmid] = {"text": text, "acked_at": None, "tries": 0}
            backoff = 0.2
            deadline = time.monotonic() + 90
            while rec["acked_at"] is None and time.monotonic() < deadline:
                rec["tries"] += 1
                try:
                    async with self.brand.http.post(f"{client.base}/messages", headers=client.headers,
                                                    json={"text": text, "client_msg_id": cmid}) as r:
                        if r.status < 300:
                            rec["acked_at"] = datetime.now(UTC)
                            break
                        try:
                            code = (await r.json())["error"]["code"]
                        except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                            code = "no error JSON"
                        self.refusals[f"{r.status} {code}"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    self.refusals["connection"] += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            await asyncio.sleep(rng.uniform(0.5, 1.5))


async def count_inbound(db: Database, w: Writers) -> dict:
    """Each message stored once (by client_msg_id) and relayed to the clerk once, and sent."""
    stored = dict(await db.q("SELECT client_msg_id, count(*) FROM message WHERE direction = 'in' AND "
                             "strpos(text, $1) > 0 GROUP BY 1", w.marker))
    relays = {r["t"]: r for r in await db.q(
        "SELECT substring(text from '(' || $1 || '-in[0-9]+)$') AS t, count(*) AS n, "
        "count(*) FILTER (WHERE status IN ('sent', 'delivered')) AS sent, max(sent_at) AS sent_at, "
        "max(created_at) AS made_at "
        "FROM message WHERE direction = 'out' AND side = 'clerk' AND strpos(text, $1) > 0 GROUP BY 1", w.marker)}
    delivered = duplicates = 0
    latency = []
    for cmid, rec in w.sent.items():
        relay = relays.get(rec["text"])
        n_relay, n_sent = (relay["n"], relay["sent"]) if relay else (0, 0)
        duplicates += max(0, max(stored.get(cmid, 0), n_relay) - 1)
        if stored.get(cmid) and n_sent:
            delivered += 1
            if rec["acked_at"] and relay["sent_at"]:  # (accepted -> relay enqueued, enqueued -> sent)
                latency.append(((relay["made_at"] - rec["acked_at"]).total_seconds(),
                                (relay["sent_at"] - relay["made_at"]).total_seconds()))
    failed = await db.val("SELECT count(*) FROM inbound_claim WHERE status = 'failed'")
    return {"expected": len(w.sent), "delivered": delivered, "duplicates": duplicates,
            "lost": len(w.sent) - delivered, "never_acked": sum(r["acked_at"] is None for r in w.sent.values()),
            "failed_claims": failed, "latency": latency}


async def trial(db: Database, i: int, n: int, rng: random.Random, logdir: Path) -> dict:
    await db.reset()
    await seed(db, n)
    gw = GatewayProc(f"pg_restart-{i + 1}", gateway_config(db.url, free_port()), logdir)
    marker = f"chaos-pg{i}-{uuid.uuid4().hex[:6]}"
    problems: list[str] = []
    outages: list[str] = []
    timeout = 120 + n / 100
    try:
        await gw.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            writers = Writers(BrandApp(http, gw.base, "webchat", WEBCHAT_SECRET), marker)
            tasks = [asyncio.create_task(writers.one(c, rng)) for c in range(1, WRITERS + 1)]
            await asyncio.sleep(1.0)  # traffic first, so the first restart also cuts inbound
            cid = await create_campaign(db, f"{marker} {{customer_name}}您好，我是{{advisor_name}}：新品到店")
            # once inside materialisation, once inside dispatch, at a random point of each
            for dispatching in (False, True):
                at = rng.uniform(0.15, 0.7) * n

                def due(st: dict, at=at, dispatching=dispatching) -> bool:
                    return st["mat"] >= n and st["sent"] >= at if dispatching else st["mat"] >= at

                deadline = time.monotonic() + timeout
                while True:
                    state = await campaign_state(db, cid)
                    if due(state) or finished(state) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                if finished(state):
                    outages.append("none (finished first)")
                    break
                took = await restart_pg()
                outages.append(f"{took:.1f} s at {phase(state, n)}")
                say(f"  pg_restart: PostgreSQL restarted at {phase(state, n)}, back after {took:.1f} s")
            await asyncio.sleep(3.0)  # writing on after the last outage
            writers.stop.set()
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + timeout
            while not finished(state := await campaign_state(db, cid)) and time.monotonic() < deadline:
                if not gw.check():
                    problems.append(f"{gw.name} died by itself; see {gw.log_path}")
                    await gw.start()
                await asyncio.sleep(0.25)
            if not finished(state):
                problems.append(f"not recovered {timeout:.0f} s after the last restart: {state}")
        code = await gw.stop()
        if code not in (0, None):
            problems.append(f"{gw.name} exited with {code} on SIGTERM; see {gw.log_path}")
        pushes = await count_campaign(db, cid, marker, n)
        inbound = await count_inbound(db, writers)
    finally:
        if gw.alive():
            await gw.kill9()
    problems += pushes["problems"]
    if inbound["failed_claims"]:
        problems.append(f"{inbound['failed_claims']} inbound claims failed for good")
    if inbound["never_acked"]:
        problems.append(f"{inbound['never_acked']} inbound messages never accepted")
    lat = inbound["latency"]
    return {"expected": pushes["expected"] + inbound["expected"],
            "delivered": pushes["delivered"] + inbound["delivered"],
            "duplicates": pushes["duplicates"] + inbound["duplicates"], "lost": pushes["lost"] + inbound["lost"],
            "pushes": f"{pushes['delivered']}/{pushes['expected']}", "inbound": f"{inbound['delivered']}/{inbound['expected']}",
            "refusals": dict(writers.refusals), "outages": outages,
            "relay_latency": (f"processed p50 {statistics.median(a for a, _ in lat):.1f} s max {max(a for a, _ in lat):.1f} s, "
                              f"sent p50 {statistics.median(b for _, b in lat):.1f} s max {max(b for _, b in lat):.1f} s")
            if lat else "n/a",
            "problems": problems}


async def run(db: Database, *, trials: int = 1, customers: int = 5000, rng: random.Random, logdir: Path) -> Result:
    res = Result("pg_restart")
    if why := can_restart():
        res.problems.append(why)
        return res
    refusals: Counter = Counter()
    restarts = 0
    for i in range(trials):
        t0 = time.monotonic()
        try:
            c = await trial(db, i, customers, rng, logdir)
        finally:
            await pg_ready()
        res.add(c)
        res.problems += [f"pg_restart trial {i + 1}: {p}" for p in c["problems"]]
        refusals.update(c["refusals"])
        restarts += sum(not o.startswith("none") for o in c["outages"])
        say(f"pg_restart {i + 1}/{trials}: {customers} customers + {WRITERS} writers, restarts: {'; '.join(c['outages'])}; "
            f"{time.monotonic() - t0:.1f} s -> pushes {c['pushes']}, inbound {c['inbound']} (refused while down: "
            f"{dict(c['refusals']) or 'none'}), relay latency {c['relay_latency']}; duplicates {c['duplicates']}, "
            f"lost {c['lost']}" + "".join(f"\n    PROBLEM: {p}" for p in c["problems"]))
    res.extra = {"restarts": restarts, "inbound_refused": sum(refusals.values()),
                 "refused_as": "+".join(sorted(refusals)) or "none"}
    return res
