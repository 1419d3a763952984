"""Benchmark: the clerk report over a large history on PostgreSQL.

A fresh database (server from TEST_PG_URL) gets 200 clerks in 20 stores, `--customers` customers
with a binding each, `--interactions` interaction rows spread over 90 days (messages in and out,
bindings, pushes, first replies with seconds, forwards) and `--orders` orders with ledger lines,
all written with set-based SQL (not timed). Then `reports.build(gw, "clerks", last 30 days)` —
what `GET /api/v1/reports/clerks` and `gateway report clerks` run — is timed, best and median of 3.

    .venv/bin/python bench/report.py [--interactions 10000000] [--orders 1000000] [--customers 1000000]

Aim (issue 8): < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from gateway import reports  # noqa: E402
from gateway.config import build_config  # noqa: E402
from gateway.db import upgrade  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402

PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
TYPES = "ARRAY['message_in','message_in','message_out','message_out','push_sent','bound','first_reply','forwarded']"


async def seed(dsn: str, customers: int, interactions: int, orders: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO store (name, created_at) SELECT '店' || g, now() FROM generate_series(1, 20) g")
        await conn.execute("INSERT INTO clerk (name, display_name, store_id, role, status, created_at) "
                           "SELECT '导购' || g, '导购' || g, 1 + g % 20, 'clerk', 'active', now() "
                           "FROM generate_series(1, 200) g")
        await conn.execute("INSERT INTO customer (name, store_id, created_at) "
                           "SELECT '顾客' || g, 1 + g % 20, now() FROM generate_series(1, $1) g", customers)
        await conn.execute("INSERT INTO binding (customer_id, clerk_id, store_id, valid_from, source) "
                           "SELECT id, 1 + id % 200, 1 + (1 + id % 200) % 20, now() - interval '120 days', 'invite' "
                           "FROM customer")
        await conn.execute(
            "INSERT INTO interaction (type, occurred_at, customer_id, clerk_id, store_id, payload) "
            f"SELECT ({TYPES})[1 + g % 8], now() - (g % 7776000) * interval '1 second', 1 + g % $2, "
            "1 + (g % $2) % 200, 1 + (1 + (g % $2) % 200) % 20, "
            "CASE WHEN g % 8 = 6 THEN json_build_object('seconds', g % 3600) ELSE '{}'::json END "
            "FROM generate_series(1, $1) g", interactions, customers)
        await conn.execute(
            "INSERT INTO orders (order_id, customer_id, channel, amount, currency, placed_at, received_at, body_hash, "
            "clerk_id, attributed_store_id, rule_version) "
            "SELECT 'O' || g, 1 + g % $2, 'store', 10 + g % 2000, 'CNY', now() - (g % 7776000) * interval '1 second', "
            "now(), md5(g::text), 1 + (g % $2) % 200, 1 + (1 + (g % $2) % 200) % 20, 'v1' "
            "FROM generate_series(1, $1) g", orders, customers)
        await conn.execute(
            "INSERT INTO ledger_entry (source, kind, clerk_id, store_id, customer_id, amount, order_id, rule_version, "
            "created_at) SELECT 'order:' || order_id, 'commission', clerk_id, attributed_store_id, customer_id, "
            "round(amount * 0.03, 2), order_id, 'v1', placed_at FROM orders")
        await conn.execute("VACUUM ANALYZE")  # what autovacuum does in a running system: index-only scans need it
    finally:
        await conn.close()


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=1_000_000)
    args = ap.parse_args()
    admin = os.environ.get("TEST_PG_URL", PG_DEFAULT)
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    aconn = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"))
    await aconn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        await upgrade(url)
        t0 = time.perf_counter()
        await seed(url.replace("postgresql+asyncpg://", "postgresql://"), args.customers, args.interactions,
                   args.orders)
        seeded = time.perf_counter() - t0
        gw = Gateway(build_config({"database": {"url": url}, "server": {"first_run_seed": False}}, env={}))
        now = gw.clock.now()
        times, rows = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            rows = await reports.build(gw, "clerks", now - timedelta(days=30), now)
            times.append(time.perf_counter() - t0)
        frm = now - timedelta(days=30)
        from gateway.models import Interaction, LedgerEntry, Order

        parts = {"counts by type": (reports._counts, Interaction.clerk_id,
                                    ("bound", "message_out", "forwarded", "push_sent"), frm, now),
                 "active customers (distinct)": (reports._active, frm, now),
                 "first-reply median": (reports._reply_median, Interaction.clerk_id, frm, now),
                 "orders and GMV": (reports._orders, Order.clerk_id, frm, now),
                 "commission": (reports._commission, LedgerEntry.clerk_id, frm, now)}
        profile = {}
        for label, (fn, *a) in parts.items():
            async with gw.db() as s:
                t0 = time.perf_counter()
                await fn(s, *a)
                profile[label] = time.perf_counter() - t0
        await gw.engine.dispose()
    finally:
        await aconn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await aconn.close()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, commit {COMMIT}")
    print(f"history: {args.interactions:,} interactions, {args.orders:,} orders, {args.customers:,} customers "
          f"(seeded in {seeded:.0f} s)")
    print(f"clerk report (30 days, {len(rows)} clerks): best {min(times):.2f} s, median {statistics.median(times):.2f} s")
    print("parts, one at a time: " + ", ".join(f"{k} {v:.2f} s" for k, v in profile.items()))
    print(f"{'met' if min(times) < 2 else 'NOT MET'}: < 2 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
